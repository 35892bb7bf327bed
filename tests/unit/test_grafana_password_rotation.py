"""The grafana role's admin password rotation handlers, against a FAKE grafana CLI and API.

Grafana applies grafana.ini's admin_password only when it creates the admin user, so the role
rotates a changed password with `grafana cli admin reset-admin-password --password-from-stdin`
and then logs in with it. Here the CLI is a small script that records its argv and stdin and
"changes" the password a fake HTTP API then accepts; a real ansible-playbook notifies the
role's handlers. What it proves: the password travels on stdin (never argv, never the log),
the login check catches a rotation that did not take, and the mark is written only after a
login with the new password worked. What it cannot prove: the real CLI's behaviour on a real
Grafana database (no Grafana server here).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import run_ansible_playbook

USER = "admin"
OLD = "the-old-password-111"
NEW = "the-new-password-222"
SECRET = "a-secret-key-0123456789"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the mark file is owned by root")


class FakeGrafanaLogin:
    """/api/health, and /api/user accepting USER with the password in `password_file`."""

    def __init__(self, password_file: Path) -> None:
        self.password_file = password_file
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                status = 404
                if self.path == "/api/health":
                    status = 200
                elif self.path == "/api/user":
                    header = self.headers.get("Authorization", "")
                    given = base64.b64decode(header[6:]).decode() if header[:6] == "Basic " else ""
                    status = 200 if given == f"{USER}:{fake.password()}" else 401
                body = json.dumps({"status": status}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def password(self) -> str:
        return self.password_file.read_text()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[FakeGrafanaLogin, Path]]:
    home = tmp_path / "grafana-home"
    (home / "bin").mkdir(parents=True)
    password_file = tmp_path / "db-password"
    password_file.write_text(OLD)
    calls = tmp_path / "cli-calls.jsonl"
    cli = home / "bin" / "grafana"
    broken = tmp_path / "cli-broken"  # when it exists, the CLI claims success, changes nothing
    cli.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "line = sys.stdin.readline().rstrip('\\n')\n"
        f"with open({str(calls)!r}, 'a') as f:\n"
        "    f.write(json.dumps({'argv': sys.argv[1:], 'stdin': line}) + '\\n')\n"
        f"if not os.path.exists({str(broken)!r}):\n"
        f"    open({str(password_file)!r}, 'w').write(line)\n"
        "print('Admin password changed successfully')\n"
    )
    cli.chmod(0o755)
    server = FakeGrafanaLogin(password_file)
    yield server, home
    server.stop()


def run_handlers(
    tmp_path: Path, server: FakeGrafanaLogin, home: Path
) -> subprocess.CompletedProcess[str]:
    """A play that loads the role's handlers and notifies the rotation, as a changed mark does."""
    config_dir = tmp_path / "etc-grafana"
    config_dir.mkdir(exist_ok=True)
    play = [
        {
            "name": "Rotate",
            "hosts": "localhost",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Load the role (its checks, variables and handlers)",
                    "ansible.builtin.import_role": {"name": "grafana", "tasks_from": "validate"},
                },
                {
                    "name": "The admin password changed",
                    "ansible.builtin.debug": {"msg": "notify"},
                    "changed_when": True,
                    "notify": "grafana admin password",
                },
            ],
        }
    ]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    extra = {
        "grafana_install_package": True,
        "grafana_admin_user": USER,
        "grafana_admin_password": NEW,
        "grafana_secret_key": SECRET,
        "grafana_http_addr": "127.0.0.1",
        "grafana_http_port": server.port,
        "grafana_config_dir": str(config_dir),
        # role variables: only extra vars override them
        "__grafana_home": str(home),
        # no sudo and no grafana user on the controller
        "ansible_become": False,
        "ansible_python_interpreter": sys.executable,
    }
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    return run_ansible_playbook(
        ["-i", "localhost,", "-c", "local", "-e", f"@{tmp_path / 'extra.json'}", "-v",
         str(tmp_path / "play.yml")],
        tmp_path,
    )


def test_grafana_password_rotation_sends_the_password_on_stdin_and_checks_the_login(
    tmp_path: Path, fake: tuple[FakeGrafanaLogin, Path]
) -> None:
    server, home = fake
    proc = run_handlers(tmp_path, server, home)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert NEW not in out and OLD not in out and SECRET not in out, "a secret was printed"

    (call,) = [json.loads(line) for line in (tmp_path / "cli-calls.jsonl").read_text().splitlines()]
    config = tmp_path / "etc-grafana" / "grafana.ini"
    assert call["argv"] == [
        "cli",
        "--homepath",
        str(home),
        "--config",
        str(config),
        "admin",
        "reset-admin-password",
        "--password-from-stdin",
    ]
    assert call["stdin"] == NEW
    assert server.password() == NEW

    mark = tmp_path / "etc-grafana" / ".admin-password.sha256"
    expected = hashlib.sha256(json.dumps([SECRET, USER, NEW]).encode()).hexdigest()
    assert mark.read_text() == expected + "\n"
    assert oct(mark.stat().st_mode & 0o777) == "0o600"
    assert re.search(r"^localhost\s*:.*failed=0", proc.stdout, re.MULTILINE), out


def test_grafana_password_rotation_that_did_not_take_fails_and_leaves_no_mark(
    tmp_path: Path, fake: tuple[FakeGrafanaLogin, Path]
) -> None:
    server, home = fake
    (tmp_path / "cli-broken").touch()
    proc = run_handlers(tmp_path, server, home)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Grafana refused admin with the new password (HTTP 401)" in out, out
    assert NEW not in out and OLD not in out
    assert server.password() == OLD
    # No mark: the next run notices the password still differs and tries again.
    assert not (tmp_path / "etc-grafana" / ".admin-password.sha256").exists()
