"""The grafana role in external mode, run by a real ansible-playbook against a FAKE Grafana.

FakeGrafana below is a small HTTP server that answers the part of Grafana's HTTP API the
bundled community.grafana modules call (folders, datasources, dashboards, organisations,
health and build info) the way Grafana 11 does: the same paths, status codes (404 for a
missing object, 412 for a dashboard saved over a newer version without overwrite, 401 for
bad credentials) and response shapes (datasources carry id, version, typeLogoUrl, readOnly
and secureJsonFields; dashboards come back with id and version added and a meta object).
It is not Grafana: what it proves is that the role sends the right objects and that the
modules find them unchanged on a second run; a real Grafana was not available here.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import requests
import yaml
from conftest import TEMPLATES, run_ansible_playbook

VERSION = "11.3.0"
ADMIN = ("admin", "fake-admin-pw-7Qx2LmZ9")
TOKEN = "glsa_fakeToken_0123456789abcdef"


@dataclass
class Request:
    method: str
    path: str
    auth: str  # "basic", "bearer" or "none"


@dataclass
class FakeGrafanaState:
    folders: list[dict[str, Any]] = field(default_factory=list)
    datasources: dict[int, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)  # uid -> record
    requests: list[Request] = field(default_factory=list)
    next_id: int = 1

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id


class FakeGrafana:
    """The HTTP API of a Grafana server with one organisation, in memory."""

    def __init__(self) -> None:
        self.state = FakeGrafanaState()
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake.handle(self, "GET")

            def do_POST(self) -> None:
                fake.handle(self, "POST")

            def do_PUT(self) -> None:
                fake.handle(self, "PUT")

            def do_DELETE(self) -> None:
                fake.handle(self, "DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- HTTP plumbing -------------------------------------------------------------------
    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        path = urlsplit(h.path).path
        auth = self.authenticate(h.headers.get("Authorization", ""))
        with self.lock:
            self.state.requests.append(Request(method, path, auth or "none"))
            if path != "/api/health" and auth is None:
                status, body = 401, {"message": "Unauthorized"}
            else:
                try:
                    payload = json.loads(raw) if raw else None
                    status, body = self.route(method, path, payload)
                except (KeyError, TypeError, ValueError) as exc:
                    status, body = 400, {"message": f"bad request: {exc}"}
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def authenticate(header: str) -> str | None:
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return "basic" if (user, password) == ADMIN else None
        if header.startswith("Bearer "):
            return "bearer" if header[7:] == TOKEN else None
        return None

    def route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        s = self.state
        if (method, path) == ("GET", "/api/health"):
            return 200, {"commit": "fake", "database": "ok", "version": VERSION}
        if (method, path) == ("GET", "/api/frontend/settings"):
            return 200, {
                "buildInfo": {"version": VERSION, "commit": "fake", "edition": "Open Source"}
            }
        if m := re.fullmatch(r"/api/user/using/(\d+)", path):
            if method == "POST" and m.group(1) == "1":
                return 200, {"message": "Active organization changed"}
            return 401, {"message": "Not a member of this organization"}
        if (method, path) == ("GET", "/api/user/orgs"):
            return 200, [{"orgId": 1, "name": "Main Org.", "role": "Admin"}]
        # folders
        if path == "/api/folders":
            if method == "GET":
                return 200, [self.folder_summary(f) for f in s.folders]
            if method == "POST":
                if any(f["title"] == body["title"] for f in s.folders):
                    return 409, {"message": "a folder with the same name already exists"}
                uid = body.get("uid") or f"f{s.next_id + 1}"
                folder = {"id": s.new_id(), "uid": uid, "title": body["title"], "version": 1}
                s.folders.append(folder)
                return 200, folder
        if m := re.fullmatch(r"/api/folders/([^/]+)", path):
            folder = next((f for f in s.folders if f["uid"] == m.group(1)), None)
            if folder is None:
                return 404, {"message": "folder not found"}
            if method == "GET":
                return 200, folder
            if method == "DELETE":
                s.folders.remove(folder)
                return 200, {"message": "Folder deleted", "id": folder["id"]}
        # datasources
        if (method, path) == ("GET", "/api/datasources"):
            return 200, list(s.datasources.values())
        if (method, path) == ("POST", "/api/datasources"):
            if any(d["name"] == body["name"] for d in s.datasources.values()):
                return 409, {"message": "data source with the same name already exists"}
            if body.get("uid") and any(d["uid"] == body["uid"] for d in s.datasources.values()):
                return 409, {"message": "data source with the same uid already exists"}
            ds_id = s.new_id()
            ds = self.datasource_from(body, ds_id, version=1)
            self.make_default(ds)
            s.datasources[ds_id] = ds
            return 200, {
                "datasource": ds,
                "id": ds_id,
                "message": "Datasource added",
                "name": ds["name"],
            }
        if m := re.fullmatch(r"/api/datasources/name/(.+)", path):
            ds = next((d for d in s.datasources.values() if d["name"] == unquote(m.group(1))), None)
            if ds is None:
                return 404, {"message": "Data source not found"}
            if method == "GET":
                return 200, ds
            if method == "DELETE":
                del s.datasources[ds["id"]]
                return 200, {"message": "Data source deleted", "id": ds["id"]}
        if m := re.fullmatch(r"/api/datasources/uid/(.+)", path):
            ds = next((d for d in s.datasources.values() if d["uid"] == m.group(1)), None)
            return (404, {"message": "Data source not found"}) if ds is None else (200, ds)
        if (m := re.fullmatch(r"/api/datasources/(\d+)", path)) and method == "PUT":
            old = s.datasources.get(int(m.group(1)))
            if old is None:
                return 404, {"message": "Data source not found"}
            ds = self.datasource_from(body, old["id"], version=old["version"] + 1, old=old)
            self.make_default(ds)
            s.datasources[old["id"]] = ds
            return 200, {
                "datasource": ds,
                "id": ds["id"],
                "message": "Datasource updated",
                "name": ds["name"],
            }
        # dashboards
        if (method, path) == ("POST", "/api/dashboards/db"):
            return self.save_dashboard(body)
        if m := re.fullmatch(r"/api/dashboards/uid/([^/]+)", path):
            record = s.dashboards.get(m.group(1))
            if record is None:
                return 404, {"message": "Dashboard not found"}
            if method == "GET":
                return 200, {
                    "dashboard": copy.deepcopy(record["dashboard"]),
                    "meta": self.meta(record),
                }
            if method == "DELETE":
                del s.dashboards[m.group(1)]
                title = record["dashboard"]["title"]
                return 200, {
                    "title": title,
                    "message": f"Dashboard {title} deleted",
                    "id": record["dashboard"]["id"],
                }
        if (method, path) == ("GET", "/api/search"):
            return 200, []
        return 404, {"message": "Not found"}

    # -- objects ---------------------------------------------------------------------------
    @staticmethod
    def folder_summary(f: dict[str, Any]) -> dict[str, Any]:
        return {"id": f["id"], "uid": f["uid"], "title": f["title"]}

    @staticmethod
    def datasource_from(
        body: dict[str, Any], ds_id: int, version: int, old: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        secure = dict((old or {}).get("secureJsonFields") or {})
        secure.update({k: True for k in body.get("secureJsonData") or {}})
        return {
            "id": ds_id,
            "uid": body.get("uid") or (old or {}).get("uid") or f"ds{ds_id}",
            "orgId": body.get("orgId") or 1,
            "name": body["name"],
            "type": body["type"],
            "typeLogoUrl": f"public/app/plugins/datasource/{body['type']}/img/logo.svg",
            "access": body.get("access") or "proxy",
            "url": body.get("url") or "",
            "user": body.get("user") or "",
            "database": body.get("database") or "",
            "basicAuth": bool(body.get("basicAuth")),
            "basicAuthUser": body.get("basicAuthUser") or "",
            "withCredentials": bool(body.get("withCredentials")),
            "isDefault": bool(body.get("isDefault")),
            "jsonData": body.get("jsonData") or {},
            "secureJsonFields": secure,
            "version": version,
            "readOnly": False,
        }

    def make_default(self, ds: dict[str, Any]) -> None:
        if ds["isDefault"]:
            for other in self.state.datasources.values():
                other["isDefault"] = False

    def save_dashboard(self, body: dict[str, Any]) -> tuple[int, Any]:
        s = self.state
        dash = copy.deepcopy(body["dashboard"])
        if not dash.get("title"):
            return 400, {"message": "Dashboard title cannot be empty"}
        folder_id = body.get("folderId") or 0
        folder = next((f for f in s.folders if f["id"] == folder_id), None)
        if folder_id and folder is None:
            return 400, {"message": "folder not found"}
        uid = dash.get("uid") or f"d{s.next_id + 1}"
        old = s.dashboards.get(uid)
        stale = old is not None and dash.get("version") != old["dashboard"]["version"]
        if stale and not body.get("overwrite"):
            return 412, {
                "message": "The dashboard has been changed by someone else",
                "status": "version-mismatch",
            }
        dash["uid"] = uid
        dash["id"] = old["dashboard"]["id"] if old else s.new_id()
        dash["version"] = old["dashboard"]["version"] + 1 if old else 1
        s.dashboards[uid] = {"dashboard": dash, "folder": folder, "message": body.get("message")}
        slug = re.sub(r"[^a-z0-9]+", "-", dash["title"].lower()).strip("-")
        return 200, {
            "id": dash["id"],
            "uid": uid,
            "url": f"/d/{uid}/{slug}",
            "status": "success",
            "version": dash["version"],
            "slug": slug,
        }

    @staticmethod
    def meta(record: dict[str, Any]) -> dict[str, Any]:
        folder = record["folder"]
        dash = record["dashboard"]
        return {
            "type": "db",
            "canSave": True,
            "canEdit": True,
            "slug": re.sub(r"[^a-z0-9]+", "-", dash["title"].lower()).strip("-"),
            "url": f"/d/{dash['uid']}",
            "version": dash["version"],
            "folderId": folder["id"] if folder else 0,
            "folderUid": folder["uid"] if folder else "",
            "folderTitle": folder["title"] if folder else "General",
            "provisioned": False,
        }


# ---------------------------------------------------------------------------------------------
@pytest.fixture
def fake_grafana() -> Iterator[FakeGrafana]:
    g = FakeGrafana()
    g.start()
    yield g
    g.stop()


def run_role(
    tmp_path: Path, grafana: FakeGrafana, *, token: bool, gateways: bool
) -> dict[str, int]:
    """ansible-playbook with the grafana role in external mode; the PLAY RECAP of mon-1."""
    monitoring_vars: dict[str, Any] = {
        "grafana_mode": "external",
        "grafana_url": grafana.url + "/",
        "prometheus_scrape_interval": "10s",
        "prometheus_web_listen_address": "0.0.0.0:9090",
    }
    if token:
        monitoring_vars["grafana_api_token"] = TOKEN
    else:
        monitoring_vars["grafana_admin_user"] = ADMIN[0]
        monitoring_vars["grafana_admin_password"] = ADMIN[1]
    inventory = {
        "all": {
            "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
            "children": {
                "monitoring": {
                    "hosts": {"mon-1": {"ansible_host": "192.0.2.21"}},
                    "vars": monitoring_vars,
                },
                "gateways": {"hosts": {"gw-1": {"ansible_host": "192.0.2.31"}} if gateways else {}},
            },
        }
    }
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (tmp_path / "play.yml").write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Provision Grafana",
                    "hosts": "monitoring",
                    "gather_facts": False,
                    "roles": ["grafana"],
                }
            ]
        )
    )
    proc = run_ansible_playbook(
        ["-i", str(tmp_path / "hosts.yml"), str(tmp_path / "play.yml")],
        tmp_path,
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_CALLBACK_RESULT_FORMAT="yaml",
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for secret in (ADMIN[1], TOKEN):
        assert secret not in out, "a Grafana credential was printed"
    m = re.search(r"^mon-1\s*:\s*(.*)$", proc.stdout, re.MULTILINE)
    assert m, out
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


def dashboard_file(name: str) -> dict[str, Any]:
    data = json.loads((TEMPLATES / "dashboards" / f"{name}.json").read_text())
    assert isinstance(data, dict)
    return data


def writes(grafana: FakeGrafana, since: int) -> list[Request]:
    return [
        r
        for r in grafana.state.requests[since:]
        if r.method != "GET" and "/api/user/using/" not in r.path
    ]


def test_grafana_external_mode_against_fake_grafana_provisions_and_is_idempotent(
    tmp_path: Path, fake_grafana: FakeGrafana
) -> None:
    g = fake_grafana
    state = g.state

    # 1. Basic auth; the inventory has a gateway: three dashboards.
    recap = run_role(tmp_path, g, token=False, gateways=True)
    # changed counts tasks: the folder, the datasource, the dashboards (a loop of three)
    assert recap["failed"] == 0 and recap["changed"] == 3, recap
    assert {r.auth for r in state.requests if r.path != "/api/health"} == {"basic"}

    (folder,) = state.folders
    assert folder["title"] == "vLLM fleet"

    (ds,) = state.datasources.values()
    assert ds["uid"] == "prometheus" and ds["name"] == "Prometheus" and ds["type"] == "prometheus"
    assert ds["url"] == "http://192.0.2.21:9090"  # the monitoring host, as Grafana reaches it
    assert ds["access"] == "proxy" and ds["isDefault"] is True
    assert ds["jsonData"]["timeInterval"] == "10s"  # = prometheus_scrape_interval
    assert ds["jsonData"]["httpMethod"] == "POST"

    assert set(state.dashboards) == {"vllm-fleet", "gpu-host", "gateway"}
    for uid, record in state.dashboards.items():
        stored = {k: v for k, v in record["dashboard"].items() if k not in ("id", "version")}
        expected = {k: v for k, v in dashboard_file(uid).items() if k != "version"}
        assert stored == expected, f"{uid}: not the project's JSON"
        assert record["folder"] is folder, f"{uid}: not in the folder"
        panel_ds = {json.dumps(p["datasource"], sort_keys=True) for p in stored["panels"]}
        assert panel_ds == {'{"type": "prometheus", "uid": "${datasource}"}'}

    # 2. The same again: nothing changes, nothing is written.
    before = len(state.requests)
    recap = run_role(tmp_path, g, token=False, gateways=True)
    assert recap["changed"] == 0, recap
    assert writes(g, before) == [], "the second run wrote to Grafana"
    assert ds["version"] == 1 and all(
        r["dashboard"]["version"] == 1 for r in state.dashboards.values()
    )

    # 3. A service account token, and the gateways group emptied: the gateway dashboard goes,
    #    the rest is left alone.
    before = len(state.requests)
    recap = run_role(tmp_path, g, token=True, gateways=False)
    assert recap["changed"] == 1, recap
    assert {r.auth for r in state.requests[before:] if r.path != "/api/health"} == {"bearer"}
    assert [(r.method, r.path) for r in writes(g, before)] == [
        ("DELETE", "/api/dashboards/uid/gateway")
    ]
    assert set(state.dashboards) == {"vllm-fleet", "gpu-host"}
    assert len(state.datasources) == 1 and len(state.folders) == 1


def test_fake_grafana_refuses_what_grafana_refuses(fake_grafana: FakeGrafana) -> None:
    """The fake's own checks: bad credentials, a stale dashboard version without overwrite."""
    url = fake_grafana.url
    assert requests.get(f"{url}/api/health", timeout=5).json()["version"] == VERSION
    assert requests.get(f"{url}/api/folders", auth=("admin", "admin"), timeout=5).status_code == 401
    headers = {"Authorization": f"Bearer {TOKEN}"}
    dash = {"dashboard": {"uid": "x", "title": "X"}, "folderId": 0}
    assert (
        requests.post(f"{url}/api/dashboards/db", json=dash, headers=headers, timeout=5).status_code
        == 200
    )
    resp = requests.post(f"{url}/api/dashboards/db", json=dash, headers=headers, timeout=5)
    assert resp.status_code == 412 and resp.json()["status"] == "version-mismatch"
    dash["overwrite"] = True
    resp = requests.post(f"{url}/api/dashboards/db", json=dash, headers=headers, timeout=5)
    assert resp.status_code == 200 and resp.json()["version"] == 2
    got = requests.get(f"{url}/api/dashboards/uid/x", headers=headers, timeout=5).json()
    assert (
        got["meta"]["folderId"] == 0 and got["dashboard"]["id"] and got["dashboard"]["version"] == 2
    )
