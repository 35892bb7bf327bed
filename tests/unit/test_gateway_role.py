"""The gateway role: its option checks (tasks/validate.yml, after its argument specs, as the
preflight runs them) and its configuration rendered from a fleet's inventory, then accepted by
the gateway's own `vllm-gateway --check-config`."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, check_validate_cases, run_ansible_playbook, write_inventory

# Two worker hosts with two vLLM instances each, two models. Capacities as the vllm role
# resolves max-num-seqs: g1 (a GPU host) sets it in vllm_engine_args (16), g1/a's own args win
# (8); g2 is a CPU host without it: vLLM's CPU default, 128 per tensor-parallel rank.
# Keep-alive (VLLM_HTTP_TIMEOUT_KEEP_ALIVE) as the vllm unit's environment gets it: g1's
# vllm_environment says 30, g1/b's own env 3 wins; g2 sets none: vLLM's 5.
WORKERS: dict[str, Any] = {
    "g1": {
        "ansible_host": "10.0.0.5",
        "vllm_device": "gpu",
        "vllm_engine_args": {"max-num-seqs": 16},
        "vllm_environment": {"VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "30"},
        "vllm_instances": [
            {"name": "a", "port": 8000, "model": "/srv/models/llama", "served_model_name": "llama",
             "args": {"max-num-seqs": 8}},
            {"name": "b", "port": 8001, "model": "org/qwen",
             "env": {"VLLM_HTTP_TIMEOUT_KEEP_ALIVE": 3}},
        ],
    },
    "g2": {
        "ansible_host": "10.0.0.6",
        "vllm_device": "cpu",
        "vllm_instances": [
            {"name": "a", "port": 8000, "model": "/srv/models/llama", "served_model_name": "llama"},
            {"name": "b", "port": 8001, "model": "org/qwen", "args": {"tensor-parallel-size": 2}},
        ],
    },
}
INVENTORY: dict[str, Any] = {
    "all": {
        "children": {
            "gateways": {"hosts": {"localhost": {"ansible_connection": "local",
                                                 "ansible_host": "127.0.0.1",
                                                 "ansible_python_interpreter": sys.executable}}},
            "gpu_workers": {"hosts": WORKERS},
            "empty_workers": {"hosts": {}},
            # A gateway host that is a worker too.
            "workers_and_gateway": {"hosts": {"localhost": {}, "g1": {}}},
            "bare_workers": {"hosts": {"g3": {"ansible_host": "10.0.0.7"}}},
            "bad_workers": {"hosts": {"g4": {"ansible_host": "10.0.0.8", "vllm_instances": [
                {"name": "a", "port": 8000, "model": "m", "args": {"max-num-seqs": 0}}]}}},
            "bad_keepalive_workers": {"hosts": {"g5": {
                "ansible_host": "10.0.0.9",
                "vllm_environment": {"VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "5s"},
                "vllm_instances": [{"name": "a", "port": 8000, "model": "m"}]}}},
        }
    }
}

CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("good", {}, None),
    ("pool overrides", {"gateway_pool_overrides": {"llama": {"queue_size": 400},
                                                   "org/qwen": {"request_timeout_s": 1200}}},
     None),
    ("a mirror URL", {"gateway_mirror_url": "https://artifacts.example/gateway/"}, None),
    ("no such worker group", {"gateway_worker_group": "gpu_eu"},
     "gateway_worker_group=gpu_eu: no such group in the inventory, or it has no hosts"),
    ("an empty worker group", {"gateway_worker_group": "empty_workers"},
     "gateway_worker_group=empty_workers: no such group"),
    ("workers without instances", {"gateway_worker_group": "bare_workers"},
     "gateway_worker_group=bare_workers: its hosts (g3) list no vllm_instances"),
    ("a worker with max-num-seqs 0", {"gateway_worker_group": "bad_workers"},
     "capacity of worker g4/a: max-num-seqs of g4/a must be 1 or more"),
    ("a worker keep-alive that is not whole seconds",
     {"gateway_worker_group": "bad_keepalive_workers"},
     "VLLM_HTTP_TIMEOUT_KEEP_ALIVE='5s' of worker g5/a: must be a whole number of seconds >= 0"),
    ("keep-alive margin 0", {"gateway_upstream_keepalive_margin_s": 0},
     "gateway_upstream_keepalive_margin_s=0: seconds above 0 between the workers' keep-alive"),
    ("negative keep-alive margin", {"gateway_upstream_keepalive_margin_s": -1},
     "gateway_upstream_keepalive_margin_s=-1: seconds above 0"),
    ("queue size 0", {"gateway_queue_size": 0}, "gateway_queue_size=0 (1 or more"),
    ("queue timeout 0", {"gateway_queue_timeout_s": 0}, "gateway_queue_timeout_s=0"),
    ("negative request timeout", {"gateway_request_timeout_s": -5},
     "gateway_request_timeout_s=-5"),
    ("shutdown timeout not a number", {"gateway_shutdown_timeout_s": "soon"},
     "argument 'gateway_shutdown_timeout_s' is of type str"),
    ("11 connect retries", {"gateway_connect_retries": 11}, "gateway_connect_retries=11 (0-10)"),
    ("health timeout above the interval", {"gateway_health_timeout_s": 10},
     "gateway_health_timeout_s=10"),
    ("health rise 0", {"gateway_health_rise": 0}, "gateway_health_rise=0"),
    ("a short stall time and canary timeout (the lab's)",
     {"gateway_health_stall_s": 5, "gateway_health_canary_timeout_s": 5}, None),
    ("stall time 0", {"gateway_health_stall_s": 0},
     "gateway_health_stall_s=0, gateway_health_canary_timeout_s=60 on localhost: both are"
     " seconds above 0"),
    ("negative canary timeout", {"gateway_health_canary_timeout_s": -1},
     "gateway_health_stall_s=120, gateway_health_canary_timeout_s=-1 on localhost: both are"
     " seconds above 0"),
    ("canary timeout above the stall time",
     {"gateway_health_stall_s": 10, "gateway_health_canary_timeout_s": 15},
     "gateway_health_stall_s=10, gateway_health_canary_timeout_s=15 on localhost: both are"
     " seconds above 0, and the canary timeout no longer than the stall time"),
    ("API port is the metrics port", {"gateway_api_port": 8080},
     "gateway_api_port=8080, gateway_metrics_port=8080"),
    ("metrics port 70000", {"gateway_metrics_port": 70000}, "gateway_metrics_port=70000"),
    ("metrics port is node_exporter's", {"gateway_metrics_port": 9100},
     "gateway_metrics_port=9100"),
    ("the gateway host's own vLLM port", {"gateway_worker_group": "workers_and_gateway",
                                          "vllm_instances": [
        {"name": "local", "port": 8000, "model": "m"}]},
     "localhost also runs vLLM instances on ports 8000"),
    # vllm_instances given with -e reaches every host: not a worker's, on a gateway host.
    ("vllm_instances on a host outside the worker group", {"vllm_instances": [
        {"name": "local", "port": 8000, "model": "m"}]}, None),
    ("override of a model nobody serves",
     {"gateway_pool_overrides": {"mistral": {"queue_size": 5}}},
     "gateway_pool_overrides keys ['mistral']: each key must be a model the workers serve"
     " (llama, org/qwen)"),
    ("override with an unknown option", {"gateway_pool_overrides": {"llama": {"queue": 5}}},
     "queue\\\": 5}: known options are queue_size, queue_timeout_s, request_timeout_s"),
    ("override with queue size 0", {"gateway_pool_overrides": {"llama": {"queue_size": 0}}},
     "gateway_pool_overrides[llama]={"),
    ("running as root", {"gateway_user": "root"}, "gateway_user=root"),
    ("no version kept", {"gateway_keep_versions": 0}, "gateway_keep_versions=0"),
    ("unknown log level", {"gateway_log_level": "verbose"},
     "value of gateway_log_level must be one of"),
    ("mirror without a scheme", {"gateway_mirror_url": "artifacts.example/gw"},
     "gateway_mirror_url=artifacts.example/gw"),
]


def test_validate_refuses_bad_options_naming_them(tmp_path: Path) -> None:
    # Stand-in interpreters (scripts, named as such) that say they are Ubuntu 24.04's Python
    # and Debian 13's.
    py312, py313 = tmp_path / "stand-in-python3.12", tmp_path / "stand-in-python3.13"
    for stand_in, version in ((py312, "3.12"), (py313, "3.13")):
        stand_in.write_text(f"#!/bin/sh\necho {version}\n")
        stand_in.chmod(0o755)
    python_cases: list[tuple[str, dict[str, Any], str | None]] = [
        ("Ubuntu 24.04's Python 3.12: the role's 3.12 lock", {"gateway_python": str(py312)},
         None),
        ("Python 3.13: no lock for it", {"gateway_python": str(py313)},
         f"gateway_python={py313} on localhost is Python 3.13; the role's locks"
         " (files/locks/gateway-deps-py<version>.txt) are for Python 3.10, 3.11, 3.12"),
        ("no such interpreter", {"gateway_python": "/usr/bin/python3.99"},
         "gateway_python=/usr/bin/python3.99 on localhost is not a working interpreter"),
        ("another Python with a lock of its own",
         {"gateway_python": str(py312), "gateway_lock_src": str(tmp_path / "lock-3.12.txt")},
         None),
    ]
    check_validate_cases("gateway", CASES + python_cases, {}, tmp_path, inventory=INVENTORY,
                         argument_spec=True)


RENDER = [
    {
        "name": "Render the gateway's configuration",
        "hosts": "gateways",
        "gather_facts": False,
        "tasks": [
            {"name": "Resolve the pools", "ansible.builtin.include_role": {
                "name": "gateway", "tasks_from": "validate", "public": True}},
            {"name": "Render", "ansible.builtin.template": {
                "src": str(REPO / "roles/gateway/templates/gateway.yml.j2"),
                "dest": "{{ render_dest }}", "mode": "0644"}},
        ],
    }
]


def test_config_has_a_pool_per_model_with_resolved_capacities(tmp_path: Path) -> None:
    play = tmp_path / "render.yml"
    play.write_text(yaml.safe_dump(RENDER, sort_keys=False))
    dest = tmp_path / "gateway.yml"
    proc = run_ansible_playbook(
        ["-i", str(write_inventory(tmp_path, INVENTORY)), str(play), "-e", f"render_dest={dest}",
         "-e", '{"gateway_pool_overrides": {"org/qwen": {"queue_size": 7}}}'], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = yaml.safe_load(dest.read_text())
    assert config["api"] == {"host": "0.0.0.0", "port": 8000}
    assert config["metrics"] == {"host": "0.0.0.0", "port": 8080}
    pools = {p["model"]: p for p in config["pools"]}
    assert list(pools) == ["llama", "org/qwen"]
    assert pools["llama"]["workers"] == [
        {"name": "g1/a", "url": "http://10.0.0.5:8000", "capacity": 8, "keepalive_s": 30},
        {"name": "g2/a", "url": "http://10.0.0.6:8000", "capacity": 128, "keepalive_s": 5},
    ]
    assert pools["org/qwen"]["workers"] == [
        {"name": "g1/b", "url": "http://10.0.0.5:8001", "capacity": 16, "keepalive_s": 3},
        {"name": "g2/b", "url": "http://10.0.0.6:8001", "capacity": 256, "keepalive_s": 5},
    ]
    # The shortest worker keep-alive (g1/b's 3 s) minus the 1 s margin.
    assert config["upstream_keepalive_s"] == 2.0
    assert (pools["llama"]["queue_size"], pools["org/qwen"]["queue_size"]) == (100, 7)
    assert (config["health"]["stall_s"], config["health"]["canary_timeout_s"]) == (120.0, 60.0)
    check = subprocess.run(
        [str(Path(sys.executable).parent / "vllm-gateway"), "--check-config", str(dest)],
        capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr


def _keepalive_filters() -> Any:
    path = REPO / "roles/gateway/filter_plugins/gateway_keepalive.py"
    spec = importlib.util.spec_from_file_location("gateway_keepalive_filters", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_upstream_keepalive_is_the_shortest_worker_keepalive_less_the_margin() -> None:
    filters = _keepalive_filters()
    assert filters.gateway_upstream_keepalive([5, 30, 3], 1) == 2.0
    assert filters.gateway_upstream_keepalive([5, 5], 0.25) == 4.75
    # Nothing left (a worker closing after 1 s, or at once): a new connection per request.
    assert filters.gateway_upstream_keepalive([1, 5], 1) == 0.0
    assert filters.gateway_upstream_keepalive([0], 1) == 0.0
    # The layers of the vllm unit's environment: the last that sets it wins.
    assert filters.gateway_keepalive([{"VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "30"}, {}], 5, "h/a") == 30
    assert filters.gateway_keepalive([{}, {"VLLM_HTTP_TIMEOUT_KEEP_ALIVE": 0}], 5, "h/a") == 0
    assert filters.gateway_keepalive([{}, None], 5, "h/a") == 5
    with pytest.raises(Exception, match=r"VLLM_HTTP_TIMEOUT_KEEP_ALIVE='-1' of worker h/a"):
        filters.gateway_keepalive([{"VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "-1"}], 5, "h/a")


def test_the_gateway_s_worker_keepalive_default_is_what_the_vllm_role_renders() -> None:
    """Without vllm_environment or an instance env setting it, an instance runs with the vllm
    role's base VLLM_HTTP_TIMEOUT_KEEP_ALIVE, or, when the role renders none, vLLM's own 5
    (vllm/envs.py); the gateway role assumes the same."""
    gateway_vars = yaml.safe_load((REPO / "roles/gateway/vars/main.yml").read_text())
    vllm_vars = yaml.safe_load((REPO / "roles/vllm/vars/main.yml").read_text())
    vllm_defaults = yaml.safe_load((REPO / "roles/vllm/defaults/main.yml").read_text())
    rendered = {**vllm_vars["__vllm_common_environment"], **vllm_defaults["vllm_environment"]}
    assert str(rendered.get("VLLM_HTTP_TIMEOUT_KEEP_ALIVE", 5)) == str(
        gateway_vars["__gateway_vllm_keepalive_s"])


def test_unit_stops_after_the_gateway_s_own_shutdown_timeout() -> None:
    unit = (REPO / "roles/gateway/templates/vllm-gateway.service.j2").read_text()
    assert "TimeoutStopSec={{ __gateway_stop_timeout }}" in unit
    assert "Restart=on-failure" in unit
    role_vars = yaml.safe_load((REPO / "roles/gateway/vars/main.yml").read_text())
    assert "gateway_shutdown_timeout_s | float + gateway_stop_grace_s" in role_vars[
        "__gateway_stop_timeout"]


def test_site_checks_the_gateways_first_and_runs_them_after_the_workers(tmp_path: Path) -> None:
    """site.yml's preflight runs the gateway role's checks on the gateways group (a bad value
    stops the run naming it), and the gateway play comes after the workers' play."""
    workers = {h: {**v, "ansible_connection": "local"} for h, v in WORKERS.items()}
    gateway = {"ansible_connection": "local", "ansible_host": "127.0.0.1",
               "ansible_python_interpreter": sys.executable, "gateway_worker_group": "gpu_eu"}
    inventory = write_inventory(tmp_path, {"all": {"children": {
        "gateways": {"hosts": {"gw1": gateway}},
        # Not gpu_workers: the vllm and nvidia checks would look at this machine.
        "gpu_eu": {"hosts": workers},
    }}})  # fmt: skip
    preflight = str(REPO / "playbooks/preflight.yml")
    good = run_ansible_playbook(["-i", str(inventory), preflight], tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "gw1" in good.stdout and "Run each role's own checks" in good.stdout
    bad = run_ansible_playbook(["-i", str(inventory), preflight, "-e", "gateway_queue_size=0"],
                               tmp_path)
    assert bad.returncode != 0
    assert "gateway_queue_size=0" in bad.stdout, bad.stdout
    listing = run_ansible_playbook(
        ["-i", str(inventory), str(REPO / "site.yml"), "--list-tasks"], tmp_path)
    assert listing.returncode == 0, listing.stdout + listing.stderr
    plays = re.findall(r"^\s*play #\d+ \(([^)]*)\): (.*?)\s+TAGS:", listing.stdout, re.MULTILINE)
    order = [hosts for hosts, _ in plays]
    assert order.index("gpu_workers") < order.index("gateways") < order.index("monitoring"), plays
    assert re.search(r"^\s+gateway : ", listing.stdout, re.MULTILINE), listing.stdout


# `make gateway-wheelhouse` (part of `make setup`) fills it for every lock.
WHEELHOUSE = Path("/var/cache/vllm-fleet/gateway-wheelhouse")


@pytest.mark.parametrize("python", ["3.10", "3.11", "3.12"])
def test_each_lock_installs_offline_from_the_wheelhouse_for_its_python(python: str) -> None:
    """Ubuntu 22.04's, Debian 12's and Ubuntu 24.04's python3: the role's install of that
    Python's lock, with its flags (no index, wheels only, hashes required), resolved by pip
    for that interpreter version against the wheelhouse (a dry run: no such Python here)."""
    lock = REPO / "roles" / "gateway" / "files" / "locks" / f"gateway-deps-py{python}.txt"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", "-", "--no-index", "--only-binary=:all:", "--find-links", str(WHEELHOUSE),
         "--require-hashes", "--python-version", python, "--implementation", "cp",
         "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64",
         "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux1_x86_64",
         "--platform", "manylinux_2_5_x86_64", "--target", "/nonexistent", "-r", str(lock)],
        capture_output=True, text=True, timeout=120,
        env={"PIP_CONFIG_FILE": "/dev/null", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
             "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    installed = {i["metadata"]["name"].lower().replace("_", "-") for i in report["install"]}
    pinned = set(re.findall(r"^([a-z0-9_.-]+)==", lock.read_text(), re.M))
    assert installed == pinned and {"aiohttp", "prometheus-client", "pyyaml"} <= installed
    tag = f"cp{python.replace('.', '')}"
    wheels = [i["download_info"]["url"] for i in report["install"]]
    assert any(tag in w for w in wheels if "aiohttp" in w), wheels  # that Python's build


def test_prometheus_scrapes_each_gateway_on_its_own_metrics_port(tmp_path: Path) -> None:
    """roles/prometheus/templates/targets.j2 renders the gateway job from the inventory: a
    host's gateway_metrics_port (what the gateway listens on) wins over the prometheus role's
    default, so moving the port moves the scrape too."""
    inventory = {"all": {"children": {
        "gpu_workers": {"hosts": {"w1": {"ansible_host": "10.0.0.5", "vllm_instances": [
            {"name": "a", "port": 8000, "model": "m"}]}}},
        "gateways": {"hosts": {"gw1": {"ansible_host": "10.0.0.8"},
                               "gw2": {"ansible_host": "10.0.0.9", "gateway_metrics_port": 9080}}},
        "monitoring": {"hosts": {"mon": {"ansible_host": "10.0.0.2"}}}}}}
    out = tmp_path / "targets.json"
    template = REPO / "roles" / "prometheus" / "templates" / "targets.j2"
    play = [{"name": "Render the scrape targets", "hosts": "mon", "gather_facts": False,
             "vars_files": [str(REPO / "roles" / "prometheus" / "defaults" / "main.yml")],
             "tasks": [{"name": "Render", "delegate_to": "localhost",
                        "ansible.builtin.copy": {
                            "content": "{{ lookup('ansible.builtin.template', '"
                                       + str(template) + "') }}",
                            "dest": str(out), "mode": "0644"}}]}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    proc = run_ansible_playbook(["-i", str(write_inventory(tmp_path, inventory)),
                                 str(tmp_path / "play.yml")], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    gateway = json.loads(out.read_text())["gateway"]
    assert gateway == [{"targets": ["10.0.0.8:8080"], "labels": {"host": "gw1"}},
                       {"targets": ["10.0.0.9:9080"], "labels": {"host": "gw2"}}]


def test_prune_keeps_this_version_and_the_newest_other(tmp_path: Path) -> None:
    """tasks/prune.yml (after the new version serves), gateway_keep_versions 2: the running
    version and the most recently installed other stay; older ones lose their venv,
    wheelhouse and lock. Run on this machine against a folder laid out like a host's."""
    root = tmp_path / "opt"
    for age, version in enumerate(["0.3.0", "0.2.0", "0.1.0", "0.0.9"]):  # newest first
        for path in (root / "venvs" / version, root / "wheelhouse" / version):
            path.mkdir(parents=True)
            os.utime(path, (1e9 - age * 100, 1e9 - age * 100))
        (root / "locks").mkdir(exist_ok=True)
        (root / "locks" / f"gateway-deps-{version}.txt").write_text("lock\n")
    # The version being deployed is not the newest folder (a rollback to 0.2.0).
    play = [{"name": "Prune", "hosts": "localhost", "connection": "local",
             "gather_facts": False, "tasks": [{"name": "Prune", "ansible.builtin.include_role": {
                 "name": "gateway", "tasks_from": "prune"}}]}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    proc = run_ansible_playbook(
        ["-i", "localhost,", str(tmp_path / "play.yml"), "-e",
         json.dumps({"gateway_install_dir": str(root), "gateway_version": "0.2.0",
                     "gateway_keep_versions": 2, "ansible_python_interpreter": sys.executable})],
        tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert sorted(p.name for p in (root / "venvs").iterdir()) == ["0.2.0", "0.3.0"]
    assert sorted(p.name for p in (root / "wheelhouse").iterdir()) == ["0.2.0", "0.3.0"]
    assert sorted(p.name for p in (root / "locks").iterdir()) == [
        "gateway-deps-0.2.0.txt", "gateway-deps-0.3.0.txt"]
