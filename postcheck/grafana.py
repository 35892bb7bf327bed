"""Grafana's server, where it runs: healthy, its Prometheus datasource healthy, every
dashboard the grafana role provisions there found by its uid (the other files of
templates/dashboards/ are listed as skipped, saying why).

Credentials come from environment variables (GRAFANA_USER / GRAFANA_PASSWORD, or a service
account token in GRAFANA_TOKEN, unless other names are given); they are never printed.
/api/health needs none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from postcheck import defaults
from postcheck.dashboards import load_dashboards
from postcheck.httpclient import session
from postcheck.report import CheckFailed, Reporter


@dataclass(frozen=True)
class GrafanaAccess:
    url: str | None  # None: no Grafana to check; missing_reason says why
    missing_reason: str = "no --grafana given"
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    user_var: str = defaults.GRAFANA_USER_ENV
    password_var: str = defaults.GRAFANA_PASSWORD_ENV
    token: str | None = field(default=None, repr=False)  # wins over user and password
    token_var: str = defaults.GRAFANA_TOKEN_ENV
    dashboards: tuple[str, ...] = defaults.GRAFANA_DASHBOARDS  # provisioned (file stems)
    dashboards_from: str = "the grafana role's default grafana_dashboards"
    verify_tls: bool = True
    datasource_uid: str = defaults.GRAFANA_DATASOURCE_UID


class Grafana:
    def __init__(self, access: GrafanaAccess, timeout_s: float) -> None:
        assert access.url is not None
        self.access = access
        self.base_url = access.url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = session()
        self.session.verify = access.verify_tls
        if access.token:
            self.session.headers["Authorization"] = f"Bearer {access.token}"
        elif access.user and access.password:
            self.session.auth = (access.user, access.password)

    def get(self, path: str) -> tuple[int, Any, str]:
        """(HTTP status, JSON body or None, body text for details)."""
        resp = self.session.get(f"{self.base_url}{path}", timeout=self.timeout_s)
        try:
            body = resp.json()
        except ValueError:
            body = None
        return resp.status_code, body, " ".join(resp.text.split())[:200]

    def refused(self, status: int, body: Any, text: str) -> CheckFailed:
        """A clear failure for 401/403 (naming the variables, never the password)."""
        said = body.get("message") if isinstance(body, dict) else None
        said = f" (Grafana: {said})" if said else ""
        a = self.access
        if status == 401 and a.token:
            return CheckFailed(
                f"HTTP 401 Unauthorized{said}: Grafana refused the service account token from "
                f"${a.token_var}: wrong, expired or revoked"
            )
        if status == 401 and not (a.user and a.password):
            return CheckFailed(
                f"HTTP 401 Unauthorized{said}: no Grafana credentials given; set "
                f"{a.user_var} and {a.password_var}, or a token in {a.token_var} (or name other "
                "variables with --grafana-user-env / --grafana-password-env / "
                "--grafana-token-env)"
            )
        if status == 401:
            return CheckFailed(
                f"HTTP 401 Unauthorized{said}: Grafana refused user {a.user!r} with the "
                f"password from ${a.password_var}: wrong user or password"
            )
        if status == 403:
            who = f"the token from ${a.token_var}" if a.token else f"user {a.user!r}"
            return CheckFailed(
                f"HTTP 403 Forbidden{said}: {who} may not read this (needs the Viewer role or more)"
            )
        return CheckFailed(f"HTTP {status} from {self.base_url}: {text or '(empty body)'}")

    def health(self) -> str:
        status, body, text = self.get("/api/health")
        if not isinstance(body, dict) or "database" not in body:
            raise CheckFailed(
                f"/api/health answered HTTP {status} without Grafana's JSON "
                f"(is this Grafana?): {text or '(empty body)'}"
            )
        if status != 200 or body.get("database") != "ok":
            raise CheckFailed(
                f"Grafana {body.get('version', '?')} at {self.base_url}: database "
                f"{body.get('database')!r} (HTTP {status})"
            )
        return f"Grafana {body.get('version', '?')} at {self.base_url}, database ok"

    def datasource(self) -> str:
        uid = self.access.datasource_uid
        status, body, text = self.get(f"/api/datasources/uid/{uid}/health")
        message = body.get("message") if isinstance(body, dict) else None
        if status in (401, 403):
            raise self.refused(status, body, text)
        if status == 404:
            raise CheckFailed(
                f"no datasource with uid {uid!r} in Grafana (provisioning file datasource.yml "
                f"not applied?){f': {message}' if message else ''}"
            )
        ds_status = body.get("status") if isinstance(body, dict) else None
        if status == 200 and ds_status == "OK":
            return f"datasource uid {uid!r}: {message or 'OK'}"
        if ds_status is not None:
            raise CheckFailed(
                f"datasource uid {uid!r} is unhealthy (status {ds_status}): "
                f"{message or text or '(no message)'}"
            )
        raise self.refused(status, body, text)

    def dashboard(self, uid: str, title: str | None) -> str:
        status, body, text = self.get(f"/api/dashboards/uid/{uid}")
        if status in (401, 403):
            raise self.refused(status, body, text)
        if status == 404:
            raise CheckFailed(
                f"no dashboard with uid {uid!r} in Grafana: not provisioned (does "
                "grafana_dashboards list it? is the provisioning folder right?)"
            )
        dash = body.get("dashboard") if isinstance(body, dict) else None
        if status != 200 or not isinstance(dash, dict):
            raise self.refused(status, body, text)
        meta = body.get("meta") if isinstance(body.get("meta"), dict) else {}
        if dash.get("uid") != uid:
            raise CheckFailed(f"asked for uid {uid!r}, Grafana answered uid {dash.get('uid')!r}")
        if title is not None and dash.get("title") != title:
            raise CheckFailed(
                f"uid {uid!r} is titled {dash.get('title')!r} in Grafana, {title!r} in the "
                "file: provisioned from another version of it?"
            )
        how = "provisioned" if meta.get("provisioned") else "NOT provisioned (saved by hand)"
        folder = meta.get("folderTitle") or "General"
        version = dash.get("version", "?")
        return f"{dash.get('title')!r} (uid {uid}, version {version}) in {folder}, {how}"


def grafana_checks(
    access: GrafanaAccess, dashboards_dir: Path, rep: Reporter, timeout_s: float
) -> None:
    dashboards, _broken = load_dashboards(dashboards_dir)  # broken files fail as "dashboard"
    files = {Path(d.file).stem: d for d in dashboards}
    wanted = [name for name in access.dashboards if name in files]
    targets = [
        (files[n].file, files[n].data.get("uid"), files[n].data.get("title")) for n in wanted
    ]
    uid = access.datasource_uid

    def skip_all(reason: str, first: bool) -> None:
        if first:
            rep.skip("grafana", access.url or "-", reason)
        rep.skip("grafana.datasource", f"uid {uid}", reason)
        for file, dash_uid, _ in targets:
            rep.skip("grafana.dashboard", f"{file} (uid {dash_uid})", reason)

    if access.url is None:  # nothing to check: every check listed, with the one reason
        targets = [(d.file, d.data.get("uid"), d.data.get("title")) for d in dashboards]
        skip_all(access.missing_reason, first=True)
        return
    for name in access.dashboards:
        if name not in files:
            rep.record(
                "grafana.dashboard",
                f"{name}.json",
                "fail",
                f"{access.dashboards_from} lists {name!r}, but {dashboards_dir} has no {name}.json",
                0.0,
            )
    for stem, dash in files.items():
        if stem not in access.dashboards:
            why = f"not provisioned here: not in {access.dashboards_from} {list(access.dashboards)}"
            if stem == defaults.GRAFANA_GATEWAY_DASHBOARD:
                why += " (the role adds it only while the gateways group has hosts)"
            rep.skip("grafana.dashboard", f"{dash.file} (uid {dash.data.get('uid')})", why)
    g = Grafana(access, timeout_s)
    try:
        if rep.run("grafana", g.base_url, g.health).status != "pass":
            skip_all("Grafana not usable (see the grafana check)", first=False)
            return
        rep.run("grafana.datasource", f"uid {uid}", g.datasource)
        for file, dash_uid, title in targets:
            target = f"{file} (uid {dash_uid})"
            if not isinstance(dash_uid, str) or not dash_uid:
                rep.record(
                    "grafana.dashboard",
                    target,
                    "fail",
                    'the file has no "uid": Grafana gives it a random one that nothing can '
                    "find; set one",
                    0.0,
                )
                continue
            wanted_title = title if isinstance(title, str) else None
            rep.run("grafana.dashboard", target, partial(g.dashboard, dash_uid, wanted_title))
    finally:
        g.session.close()


def describe(access: GrafanaAccess) -> dict[str, Any]:
    """For the JSON summary (no password)."""
    if access.token:
        credentials: list[str] | None = [access.token_var]
    elif access.password:
        credentials = [access.user_var, access.password_var]
    else:
        credentials = None
    return {
        "url": access.url,
        "user": None if access.token else access.user,
        "credentials_from": credentials,
        "dashboards": list(access.dashboards),
        "skipped_because": None if access.url else access.missing_reason,
    }
