"""The roles' option documentation, and the grafana role's templates, tasks and checks.

No lab and no Grafana: the provisioning templates are rendered with jinja2 the way Ansible
renders them and compared with Grafana's documented provisioning format (apiVersion 1;
datasources[].name/type/uid/url/access/jsonData; providers[].name/type: file/options.path);
the option checks run in a real ansible-playbook on the controller.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from conftest import REPO, check_validate_cases

ROLES = sorted(p for p in (REPO / "roles").iterdir() if (p / "tasks" / "main.yml").exists())
GRAFANA = REPO / "roles" / "grafana"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# --- every role: defaults/main.yml and meta/argument_specs.yml agree ---------------------------


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_defaults_and_argument_specs_have_the_same_options(role: Path) -> None:
    """Every default is documented and every documented option has a default, except the
    required ones; where the spec states a default, it is the one in defaults/main.yml."""
    defaults = load_yaml(role / "defaults" / "main.yml") or {}
    specs = load_yaml(role / "meta" / "argument_specs.yml")["argument_specs"]
    options = specs["main"]["options"]
    required = {k for k, v in options.items() if v.get("required")}
    assert set(defaults) - set(options) == set(), "defaults without a spec entry"
    assert set(options) - set(defaults) - required == set(), "options without a default"
    assert required & set(defaults) == set(), "a required option has a default"
    for name, spec in options.items():
        assert spec.get("description"), f"{name}: no description"
        assert name.startswith(role.name.split("_")[0]), f"{name}: not prefixed with the role"
        if name not in defaults:
            continue
        value = defaults[name]
        templated = isinstance(value, str) and "{{" in value
        if "default" in spec:
            assert spec["default"] == value, (
                f"{name}: spec says {spec['default']!r}, defaults {value!r}"
            )
        else:
            assert templated, f"{name}: the spec does not state the default {value!r}"


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_entry_point_has_options(role: Path) -> None:
    specs = load_yaml(role / "meta" / "argument_specs.yml")["argument_specs"]
    assert "main" in specs
    for entry, spec in specs.items():
        assert spec.get("short_description") and spec.get("options"), entry


# --- grafana: templates ---------------------------------------------------------------------


def render(template: str, **variables: Any) -> str:
    """Render like Ansible's template module (trim_blocks), failing on an undefined variable."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(GRAFANA / "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        keep_trailing_newline=True,
    )
    return env.get_template(template).render(ansible_managed="Ansible managed", **variables)


DATASOURCE_VARS = {
    "__grafana_datasource_name": "Prometheus",
    "__grafana_datasource_uid": "prometheus",
    "grafana_prometheus_url": "http://127.0.0.1:9090",
    "grafana_prometheus_scrape_interval": "15s",
    "grafana_prometheus_basic_auth_user": "",
    "grafana_prometheus_basic_auth_password": "",
}


def test_datasource_with_prometheus_basic_auth_and_tls_on_loopback() -> None:
    text = render(
        "datasource.yml.j2",
        **{**DATASOURCE_VARS, "grafana_prometheus_url": "https://127.0.0.1:9090",
           "grafana_prometheus_basic_auth_user": "grafana",
           "grafana_prometheus_basic_auth_password": 'p"w: #1'},
    )  # fmt: skip
    (ds,) = yaml.safe_load(text)["datasources"]
    assert ds["basicAuth"] is True and ds["basicAuthUser"] == "grafana"
    assert ds["secureJsonData"] == {"basicAuthPassword": 'p"w: #1'}
    assert ds["jsonData"]["tlsSkipVerify"] is True


def test_datasource_provisioning_file_has_grafanas_format() -> None:
    text = render("datasource.yml.j2", **DATASOURCE_VARS)
    doc = yaml.safe_load(text)
    assert set(doc) == {"apiVersion", "datasources"} and doc["apiVersion"] == 1
    (ds,) = doc["datasources"]
    assert ds == {
        "name": "Prometheus",
        "uid": "prometheus",
        "type": "prometheus",
        "access": "proxy",
        "orgId": 1,
        "url": "http://127.0.0.1:9090",
        "isDefault": True,
        "editable": False,
        "jsonData": {"timeInterval": "15s", "httpMethod": "POST"},
    }
    # What the lab test greps for in the rendered file.
    assert "uid: prometheus" in text and "timeInterval: 15s" in text


def test_datasource_url_with_yaml_special_characters_stays_one_string() -> None:
    url = "http://prom.example.com:9090/prefix?a=b#c: d"
    doc = yaml.safe_load(
        render("datasource.yml.j2", **{**DATASOURCE_VARS, "grafana_prometheus_url": url})
    )
    assert doc["datasources"][0]["url"] == url


def test_dashboard_provider_file_has_grafanas_format() -> None:
    doc = yaml.safe_load(
        render(
            "dashboards.yml.j2",
            grafana_dashboards_folder="vLLM fleet",
            grafana_dashboards_dir="/var/lib/grafana/dashboards",
        )
    )
    assert set(doc) == {"apiVersion", "providers"} and doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["name"] == "vllm-fleet" and provider["type"] == "file"
    assert provider["orgId"] == 1 and provider["folder"] == "vLLM fleet"
    assert provider["options"] == {
        "path": "/var/lib/grafana/dashboards",
        "foldersFromFilesStructure": False,
    }
    # Removing a file must remove its dashboard (the gateway's, when the group empties).
    assert provider["disableDeletion"] is False
    assert provider["allowUiUpdates"] is False
    assert isinstance(provider["updateIntervalSeconds"], int)


def test_grafana_ini_renders_sections_keys_and_quotes() -> None:
    ini = {
        "instance_name": "mon-1",
        "server": {"http_addr": "0.0.0.0", "http_port": 3000, "protocol": "http"},
        "security": {"admin_password": "pa;ss#w0rd-long", "disable_gravatar": True},
        "auth.anonymous": {"enabled": False},
        "feature_toggles": {"enable": ["a", "b"]},
    }
    text = render("grafana.ini.j2", __grafana_ini=ini)
    assert text.startswith("# Ansible managed\ninstance_name = mon-1\n"), text
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string("[top]\n" + text)
    assert parser["top"]["instance_name"] == "mon-1"
    assert parser["server"]["http_port"] == "3000"
    assert parser["auth.anonymous"]["enabled"] == "false"  # lower case, as Grafana documents
    assert parser["security"]["disable_gravatar"] == "true"
    # Grafana's ini reader treats ; and # as comments unless the value is triple-quoted.
    assert parser["security"]["admin_password"] == '"""pa;ss#w0rd-long"""'
    assert parser["feature_toggles"]["enable"] == "a,b"


def test_grafana_ini_defaults_are_safe() -> None:
    v = load_yaml(GRAFANA / "vars" / "main.yml")
    d = v["__grafana_ini_defaults"]
    assert d["auth.anonymous"]["enabled"] is False
    assert d["users"]["allow_sign_up"] is False
    assert d["analytics"]["reporting_enabled"] is False
    assert d["analytics"]["check_for_updates"] is False
    assert d["snapshots"]["external_enabled"] is False
    owned = v["__grafana_ini_owned"]
    assert owned["security"] == {
        "admin_user": "{{ grafana_admin_user }}",
        "admin_password": "{{ grafana_admin_password }}",
        "secret_key": "{{ grafana_secret_key }}",
    }
    # the keys with variables win over grafana_ini
    assert v["__grafana_ini"].split("|")[-1].strip().startswith("combine(__grafana_ini_owned")


# --- grafana: tasks and handlers ----------------------------------------------------------------


def iter_tasks(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for item in items or []:
        found.append(item)
        for key in ("block", "rescue", "always"):
            found += iter_tasks(item.get(key, []))
    return found


def module_of(task: dict[str, Any]) -> str | None:
    keywords = {
        "name", "when", "tags", "loop", "loop_control", "register", "notify", "no_log",
        "become", "become_user", "changed_when", "failed_when", "until", "retries", "delay",
        "vars", "listen", "check_mode", "delegate_to", "run_once", "module_defaults",
        "block", "rescue", "always",
    }  # fmt: skip
    modules = [k for k in task if k not in keywords]
    assert len(modules) <= 1, task
    return modules[0] if modules else None


PHASES = {"grafana_install", "grafana_configure", "grafana_run"}


@pytest.mark.parametrize("name", ["install.yml", "configure.yml", "run.yml", "external.yml"])
def test_grafana_tasks_carry_a_phase_tag_and_use_fqcn(name: str) -> None:
    tasks = load_yaml(GRAFANA / "tasks" / name)
    for task in tasks:
        assert set(task.get("tags", [])) & PHASES, f"{name}: {task['name']}: no phase tag"
    for task in iter_tasks(tasks):
        module = module_of(task)
        if module:
            assert module.startswith(("ansible.builtin.", "community.grafana.")), module


def test_grafana_package_is_pinned_held_and_from_a_signed_deb822_source() -> None:
    tasks = {t["name"]: t for t in load_yaml(GRAFANA / "tasks" / "install.yml")}
    repo = tasks["Add Grafana's apt repository"]["ansible.builtin.deb822_repository"]
    assert repo["signed_by"] == "{{ __grafana_apt_signed_by }}"
    assert repo["uris"] == ["{{ grafana_apt_repo_url }}"]
    install = tasks["Install Grafana {{ grafana_version }}"]["ansible.builtin.apt"]
    assert install["name"] == "{{ grafana_package }}={{ grafana_version }}"
    assert install["state"] == "present" and install["allow_change_held_packages"] is True
    hold = tasks["Hold the Grafana package at this version"]["ansible.builtin.dpkg_selections"]
    assert hold == {"name": "{{ grafana_package }}", "selection": "hold"}
    for t in tasks.values():
        if t["name"] != "Say that the Grafana server is not installed here":
            assert "grafana_install_package" in t["when"], t["name"]
    defaults = load_yaml(GRAFANA / "defaults" / "main.yml")
    assert re.fullmatch(r"\d+\.\d+\.\d+", defaults["grafana_version"])
    assert defaults["grafana_apt_repo_url"] == "https://apt.grafana.com"
    assert defaults["grafana_apt_key_url"] == "https://apt.grafana.com/gpg.key"


def test_grafana_files_are_root_grafana_0640_and_secrets_stay_out_of_logs() -> None:
    tasks = {t["name"]: t for t in load_yaml(GRAFANA / "tasks" / "configure.yml")}
    for t in tasks.values():
        args = t.get("ansible.builtin.template") or t.get("ansible.builtin.copy")
        if args and "check_mode" not in t:
            assert (args["owner"], args["group"], args["mode"]) == ("root", "grafana", "0640"), t[
                "name"
            ]
    assert tasks["Write grafana.ini"]["no_log"] is True
    mark = tasks["Check whether Grafana's admin password must be rotated"]
    assert mark["check_mode"] is True and mark["no_log"] is True
    assert mark["notify"] == "grafana admin password"


def test_grafana_handlers_restart_then_rotate_the_password_through_stdin() -> None:
    handlers = load_yaml(GRAFANA / "handlers" / "main.yml")
    names = [h["name"] for h in handlers]
    assert names == [
        "Restart Grafana",
        "Wait for Grafana to answer after the restart",
        "Rotate the admin password in Grafana's database",
        "Log in with the new admin password",
        "Check the admin logs in with the new password",
        "Record the admin password Grafana accepted",
    ]
    by_name = {h["name"]: h for h in handlers}
    restart = by_name["Restart Grafana"]
    assert restart["ansible.builtin.systemd_service"]["state"] == "restarted"
    rotate = by_name["Rotate the admin password in Grafana's database"]
    argv = rotate["ansible.builtin.command"]["argv"]
    assert argv[1:2] == ["cli"] and argv[-3:] == [
        "admin",
        "reset-admin-password",
        "--password-from-stdin",
    ]
    assert not any("password }}" in a for a in argv), "the password must not be on the command line"
    assert rotate["ansible.builtin.command"]["stdin"] == "{{ grafana_admin_password }}"
    assert rotate["no_log"] is True and rotate["become_user"] == "grafana"
    for h in handlers:
        assert "grafana_install_package" in h["when"], h["name"]
        if "password" in str(h.get("ansible.builtin.uri", "")) or "password" in str(
            h.get("ansible.builtin.copy", "")
        ):
            assert h.get("no_log") is True, h["name"]


def test_external_mode_runs_once_on_the_controller() -> None:
    (block,) = load_yaml(GRAFANA / "tasks" / "external.yml")
    assert block["delegate_to"] == "localhost" and block["run_once"] is True
    assert block["become"] is False
    defaults = block["module_defaults"]["group/community.grafana.grafana"]
    assert defaults["url"] == "{{ grafana_url }}"
    modules = [module_of(t) for t in block["block"]]
    assert modules == [
        "community.grafana.grafana_folder",
        "community.grafana.grafana_datasource",
        "community.grafana.grafana_dashboard",
        "community.grafana.grafana_dashboard",
    ]
    ds = block["block"][1]["community.grafana.grafana_datasource"]
    assert ds["uid"] == "{{ __grafana_datasource_uid }}"
    assert ds["time_interval"] == "{{ grafana_prometheus_scrape_interval }}"


# --- grafana: the option checks (tasks/validate.yml), in a real ansible-playbook ---------------

GOOD_LOCAL = {
    "grafana_admin_password": "a-good-password-123",
    "grafana_secret_key": "a-good-secret-key-456",
}
CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("good local", {}, None),
    ("good external, token", {"grafana_mode": "external", "grafana_url": "https://g.example.com",
                              "grafana_admin_password": "", "grafana_secret_key": "",
                              "grafana_api_token": "glsa_x"}, None),
    ("good external, password", {"grafana_mode": "external", "grafana_url": "http://g:3000",
                                 "grafana_secret_key": ""}, None),
    # Refused by the argument specs (choices) before tasks/validate.yml, as in the preflight.
    ("unknown mode", {"grafana_mode": "remote"},
     "value of grafana_mode must be one of: local, external, got: remote"),
    ("no password", {"grafana_admin_password": ""}, "grafana_admin_password is not set: it"),
    ("admin password", {"grafana_admin_password": "admin"},
     "or the user name: it must be set (from a vault)"),
    ("short password", {"grafana_admin_password": "short-pw"},
     "grafana_admin_password is shorter than 12 characters: it"),
    ("password = user", {"grafana_admin_user": "operator-account", "grafana_admin_password":
                         "operator-account"},
     "or the user name: it must be set (from a vault)"),
    ("multi-line password", {"grafana_admin_password": "line-one-long\nline-two"},
     "grafana_admin_password spans several lines: it"),
    ("no secret key", {"grafana_secret_key": ""}, "grafana_secret_key is not set: it"),
    ("Grafana's default secret key", {"grafana_secret_key": "SW2YcwTIb9zpOOhoPsMm"},
     "built-in default: it must be set (from a vault)"),
    ("latest", {"grafana_version": "latest"}, "grafana_version=latest"),
    ("missing key file", {"grafana_apt_key_src": "/nonexistent/grafana.asc"},
     "grafana_apt_key_src=/nonexistent/grafana.asc"),
    ("ini owns the port", {"grafana_ini": {"server": {"http_port": 8080}}},
     "grafana_ini must not set server.http_addr, server.http_port, security.admin_user"),
    ("ini owns the password", {"grafana_ini": {"security": {"admin_password": "x"}}},
     "grafana_ini must not set server.http_addr, server.http_port, security.admin_user"),
    ("ini nested too deep", {"grafana_ini": {"server": {"a": {"b": 1}}}},
     "grafana_ini must map section names to {key: value}"),
    ("external without url", {"grafana_mode": "external"},
     "grafana_mode=external needs grafana_url (http(s)://host[:port]) and either"),
    ("external without credentials", {"grafana_mode": "external", "grafana_url": "http://g:3000",
                                      "grafana_admin_password": ""},
     "grafana_mode=external needs grafana_url (http(s)://host[:port]) and either"),
    ("unknown dashboard", {"grafana_dashboards": ["vllm-fleet", "nope"]},
     "grafana_dashboards: nope"),
    ("scrape interval", {"grafana_prometheus_scrape_interval": "fast"},
     "grafana_prometheus_scrape_interval=fast"),
    # From the lab's site.yml cases (tests/lab/test_site.py keeps a few).
    ("port of Prometheus", {"grafana_http_port": 9090}, "grafana_http_port=9090"),
    ("long password in grafana_ini", {"grafana_ini": {"security": {"admin_password": "x" * 16}}},
     "grafana_ini must not set server.http_addr, server.http_port, security.admin_user"),
]  # fmt: skip


def test_grafana_validate_refuses_bad_options_naming_them(tmp_path: Path) -> None:
    out = check_validate_cases("grafana", CASES, GOOD_LOCAL, tmp_path, argument_spec=True)
    for secret in ("a-good-password-123", "a-good-secret-key-456"):
        assert secret not in out
