"""The Grafana checks against a fake Grafana: health, datasource health, dashboards by uid."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST, TEMPLATES, Result
from fakes import FakeGrafana, FakeVLLM

from postcheck import defaults
from postcheck.fleet import UsageError
from postcheck.grafana import GrafanaAccess, grafana_checks
from postcheck.inventory import fleet_from_inventory
from postcheck.report import Reporter

DASHBOARDS = TEMPLATES / "dashboards"
PASSWORD = "Gr4fana-S3cret"


def run_checks(access: GrafanaAccess, dashboards: Path = DASHBOARDS) -> dict[str, Any]:
    out = io.StringIO()
    rep = Reporter(out, secrets=[x for x in (access.password, access.token) if x])
    grafana_checks(access, dashboards, rep, timeout_s=3)
    report = rep.to_json({})
    assert PASSWORD not in out.getvalue() + json.dumps(report)
    assert not access.token or access.token not in out.getvalue() + json.dumps(report)
    return {f"{c['name']} {c['target']}": c for c in report["checks"]}


def access(
    g: FakeGrafana | str,
    user: str | None = "admin",
    password: str | None = PASSWORD,
    **more: Any,
) -> GrafanaAccess:
    url = g if isinstance(g, str) else g.url
    return GrafanaAccess(url, "", user, password, **more)


def provisioned() -> set[str]:
    """The dashboard files the grafana role provisions by default (no gateways)."""
    return {f"{name}.json" for name in defaults.GRAFANA_DASHBOARDS}


def test_everything_passes_against_fake_grafana(fake_grafana: Callable[..., FakeGrafana]) -> None:
    g = fake_grafana(password=PASSWORD)

    checks = run_checks(access(g))

    assert "database ok" in checks[f"grafana {g.url}"]["detail"]
    assert "Successfully queried" in checks["grafana.datasource uid prometheus"]["detail"]
    dash = checks["grafana.dashboard vllm-fleet.json (uid vllm-fleet)"]["detail"]
    assert "'vLLM fleet'" in dash and "provisioned" in dash
    # every dashboard the role provisions is looked up by its file's uid, with basic auth;
    # the other files are listed as skipped, saying why
    paths = [p for p, _ in g.requests]
    for f in sorted(DASHBOARDS.glob("*.json")):
        uid = json.loads(f.read_text())["uid"]
        check = checks[f"grafana.dashboard {f.name} (uid {uid})"]
        if f.name in provisioned():
            assert check["status"] == "pass" and f"/api/dashboards/uid/{uid}" in paths
        else:
            assert check["status"] == "skip" and "not provisioned here" in check["detail"]
            assert f"/api/dashboards/uid/{uid}" not in paths
    assert {c["status"] for c in checks.values() if "dashboard" not in c["name"]} == {"pass"}
    assert all(auth and auth.startswith("Basic ") for p, auth in g.requests if p != "/api/health")


def test_wrong_password_is_a_clear_failure_against_fake_grafana(
    fake_grafana: Callable[..., FakeGrafana],
) -> None:
    g = fake_grafana(password="the-right-one")

    checks = run_checks(access(g, password=PASSWORD))

    assert checks[f"grafana {g.url}"]["status"] == "pass"  # /api/health needs no login
    ds = checks["grafana.datasource uid prometheus"]
    assert ds["status"] == "fail"
    assert ds["detail"].startswith("HTTP 401 Unauthorized")
    assert "refused user 'admin'" in ds["detail"] and "$GRAFANA_PASSWORD" in ds["detail"]
    assert "wrong user or password" in ds["detail"]
    dash = checks["grafana.dashboard vllm-fleet.json (uid vllm-fleet)"]
    assert dash["status"] == "fail" and "HTTP 401" in dash["detail"]


def test_no_credentials_says_which_variables_against_fake_grafana(
    fake_grafana: Callable[..., FakeGrafana],
) -> None:
    g = fake_grafana()

    checks = run_checks(access(g, user=None, password=None))

    detail = checks["grafana.datasource uid prometheus"]["detail"]
    assert "no Grafana credentials given" in detail and "GRAFANA_USER" in detail


def test_unhealthy_datasource_and_missing_dashboard_against_fake_grafana(
    tmp_path: Path, fake_grafana: Callable[..., FakeGrafana]
) -> None:
    g = fake_grafana(
        password=PASSWORD,
        dashboards={"vllm-fleet": {"uid": "vllm-fleet", "title": "vLLM fleet (old)"}},
        datasources={"prometheus": 'Post "http://127.0.0.1:9090/api/v1/query": connection refused'},
    )
    dashboards = tmp_path / "dashboards"
    dashboards.mkdir()
    (dashboards / "vllm-fleet.json").write_text(
        json.dumps({"uid": "vllm-fleet", "title": "vLLM fleet"})
    )
    (dashboards / "gateway.json").write_text(json.dumps({"uid": "gateway", "title": "Gateway"}))
    (dashboards / "no-uid.json").write_text(json.dumps({"title": "No uid"}))

    more = {"dashboards": ("vllm-fleet", "gateway", "no-uid", "gone")}
    checks = run_checks(access(g, **more), dashboards)

    ds = checks["grafana.datasource uid prometheus"]
    assert ds["status"] == "fail" and "unhealthy (status ERROR)" in ds["detail"]
    assert "connection refused" in ds["detail"]
    old = checks["grafana.dashboard vllm-fleet.json (uid vllm-fleet)"]
    assert old["status"] == "fail" and "titled 'vLLM fleet (old)' in Grafana" in old["detail"]
    missing = checks["grafana.dashboard gateway.json (uid gateway)"]
    assert missing["status"] == "fail" and "no dashboard with uid 'gateway'" in missing["detail"]
    no_uid = checks["grafana.dashboard no-uid.json (uid None)"]
    assert no_uid["status"] == "fail" and 'no "uid"' in no_uid["detail"]
    gone = checks["grafana.dashboard gone.json"]
    assert gone["status"] == "fail" and "has no gone.json" in gone["detail"]


def test_unreachable_grafana_fails_and_the_rest_is_skipped_against_fake_grafana() -> None:
    checks = run_checks(access("http://127.0.0.1:9"))

    health = checks["grafana http://127.0.0.1:9"]
    assert health["status"] == "fail" and "connection refused" in health["detail"]
    for key in (
        "grafana.datasource uid prometheus",
        "grafana.dashboard vllm-fleet.json (uid vllm-fleet)",
    ):
        assert checks[key]["status"] == "skip"
        assert checks[key]["detail"] == "Grafana not usable (see the grafana check)"


def test_not_installed_lists_the_checks_as_skipped_against_fake_grafana() -> None:
    data = {
        "gpu_workers": {"hosts": ["w1"]},
        "monitoring": {"hosts": ["mon1"]},
        "_meta": {
            "hostvars": {
                "w1": {"vllm_instances": [{"name": "a", "port": 8000, "model": "m"}]},
                "mon1": {"ansible_host": "10.0.0.2", "grafana_install_package": False},
            }
        },
    }
    fleet = fleet_from_inventory(data, source="test")
    assert fleet.grafana_url is None
    reason = "grafana_install_package=false: Grafana's server is not installed on mon1"
    assert fleet.grafana_missing_reason == reason

    checks = run_checks(GrafanaAccess(None, fleet.grafana_missing_reason))

    assert {c["status"] for c in checks.values()} == {"skip"}
    assert {c["name"] for c in checks.values()} == {
        "grafana",
        "grafana.datasource",
        "grafana.dashboard",
    }
    assert checks["grafana -"]["detail"] == reason
    assert checks["grafana.datasource uid prometheus"]["detail"] == reason
    assert checks["grafana.dashboard vllm-fleet.json (uid vllm-fleet)"]["detail"] == reason


def test_grafana_from_inventory_like_the_grafana_role() -> None:
    def fleet(mon_vars: dict[str, Any], gateways: tuple[str, ...] = ()) -> Any:
        data = {
            "gpu_workers": {"hosts": ["w1"]},
            "monitoring": {"hosts": ["mon1", "mon2"]},
            "gateways": {"hosts": list(gateways)},
            "_meta": {
                "hostvars": {
                    "w1": {
                        "vllm_instances": [{"name": "a", "port": 8000, "model": "m"}],
                        "vllm_version": "0.31.0",
                    },
                    "mon1": {"ansible_host": "10.0.0.2", **mon_vars},
                    "mon2": {"ansible_host": "10.0.0.3", "grafana_http_port": 1},
                }
            },
        }
        return fleet_from_inventory(data, source="test")

    default = fleet({})
    assert default.grafana_url == "http://10.0.0.2:3000"  # the role's default port
    assert default.grafana_admin_user == "admin"
    assert default.workers[0].vllm_version == "0.31.0"
    assert default.grafana_dashboards == ("vllm-fleet", "gpu-host")
    custom = fleet({"grafana_http_port": "3300", "grafana_admin_user": "ops"})
    assert custom.grafana_url == "http://10.0.0.2:3300" and custom.grafana_admin_user == "ops"
    assert fleet({"grafana_install_package": "no"}).grafana_url is None
    tls = fleet({"grafana_http_addr": "10.9.9.9", "grafana_ini": {"server": {"protocol": "https"}}})
    assert tls.grafana_url == "https://10.9.9.9:3000"
    assert fleet({"grafana_http_addr": "127.0.0.1"}).grafana_url == "http://10.0.0.2:3000"
    # the gateway dashboard only while the gateways group has hosts, like the role
    assert fleet({}, gateways=("gw1",)).grafana_dashboards == ("vllm-fleet", "gpu-host", "gateway")
    listed = fleet({"grafana_dashboards": ["vllm-fleet", "gateway"]})
    assert listed.grafana_dashboards == ("vllm-fleet",)
    # external mode: the Grafana at grafana_url, installed or not
    external = fleet(
        {
            "grafana_mode": "external",
            "grafana_url": "https://grafana.example.com/",
            "grafana_install_package": False,
            "grafana_validate_certs": False,
        }
    )
    assert external.grafana_url == "https://grafana.example.com"
    assert external.grafana_verify_tls is False
    unset = fleet({"grafana_mode": "external"})
    assert (
        unset.grafana_url is None and "grafana_url of mon1 is empty" in unset.grafana_missing_reason
    )
    with pytest.raises(UsageError, match="grafana_http_port of mon1"):
        fleet({"grafana_http_port": "http"})


def test_cli_wrong_password_fails_clearly_and_others_still_run_against_fake_grafana(
    fake_vllm: Callable[..., FakeVLLM],
    fake_grafana: Callable[..., FakeGrafana],
    run_postcheck: Callable[..., Result],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    v = fake_vllm()
    g = fake_grafana(user="ops", password="the-right-one")
    monkeypatch.setenv("MY_GRAFANA_USER", "ops")
    monkeypatch.setenv("MY_GRAFANA_PW", PASSWORD)

    r = run_postcheck(
        "--worker",
        f"{v.url},tiny",
        "--grafana",
        g.url,
        "--grafana-user-env",
        "MY_GRAFANA_USER",
        "--grafana-password-env",
        "MY_GRAFANA_PW",
        *FAST,
    )

    assert r.code == 1
    [ds] = r.checks("grafana.datasource", "fail")
    assert "HTTP 401 Unauthorized" in ds["detail"] and "$MY_GRAFANA_PW" in ds["detail"]
    assert r.checks("grafana", "pass")
    assert PASSWORD not in r.out + json.dumps(r.report)
    assert r.report["summary"]["grafana"]["user"] == "ops"
    # the workers were checked all the same
    for name in ("health", "models", "completion", "metrics", "load"):
        assert r.checks(name, "pass"), name


def test_token_instead_of_a_password_against_fake_grafana(
    fake_grafana: Callable[..., FakeGrafana],
) -> None:
    g = fake_grafana(token="glsa_0123456789abcdef")

    good = run_checks(access(g, None, None, token="glsa_0123456789abcdef"))
    bad = run_checks(access(g, None, None, token="glsa_revoked"))

    assert good["grafana.datasource uid prometheus"]["status"] == "pass"
    assert any(auth == "Bearer glsa_0123456789abcdef" for _, auth in g.requests)
    detail = bad["grafana.datasource uid prometheus"]["detail"]
    assert "refused the service account token from $GRAFANA_TOKEN" in detail


def test_cli_grafana_usage_errors(
    run_postcheck: Callable[..., Result],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = ["--worker", "http://127.0.0.1:9", "--grafana", "http://127.0.0.1:9"]
    assert run_postcheck(*base, "--grafana-password-env", "UNSET_VAR_X").code == 2
    assert "UNSET_VAR_X: that environment variable is empty or unset" in capsys.readouterr().err
    monkeypatch.setenv("GRAFANA_USER", "someone")
    assert run_postcheck(*base).code == 2
    assert "$GRAFANA_USER is set but $GRAFANA_PASSWORD is empty" in capsys.readouterr().err
    assert (
        run_postcheck("--worker", "http://127.0.0.1:9", "--grafana", "http://u:p@h:3000").code == 2
    )
    assert "carries credentials" in capsys.readouterr().err


def test_cli_password_file_wins_over_the_environment_against_fake_grafana(
    fake_vllm: Callable[..., FakeVLLM],
    fake_grafana: Callable[..., FakeGrafana],
    run_postcheck: Callable[..., Result],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    v = fake_vllm()
    g = fake_grafana(password=PASSWORD)
    monkeypatch.setenv("GRAFANA_PASSWORD", "a-stale-one")
    secret = tmp_path / "grafana-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)

    r = run_postcheck("--worker", f"{v.url},tiny", "--grafana", g.url,
                      "--grafana-password-file", str(secret), *FAST)

    assert r.code == 0, r.out
    assert r.checks("grafana.datasource", "pass")
    assert PASSWORD not in r.out + json.dumps(r.report)
    missing = run_postcheck("--worker", f"{v.url},tiny", "--grafana", g.url,
                            "--grafana-password-file", str(tmp_path / "nope"), *FAST)
    assert missing.code == 2
