"""Read the fleet from an Ansible inventory through `ansible-inventory --list`.

Hostvars read (the roles' public variables; defaults in defaults.py):
  gpu_workers hosts:  ansible_host, vllm_instances (list of {name, port, served_model_name|model}),
                      vllm_api_key (optional; a vaulted value is decrypted with ansible-vault)
  every host:         ansible_host, node_exporter_web_listen_address (its port)
  first monitoring:   ansible_host, prometheus_web_listen_address, prometheus_scrape_interval,
                      prometheus_web_basic_auth_users (first user), prometheus_web_tls_cert_file,
                      grafana_mode, grafana_url, grafana_install_package, grafana_http_addr,
                      grafana_http_port, grafana_ini.server.protocol, grafana_admin_user,
                      grafana_dashboards, grafana_gateway_group, grafana_validate_certs
  gpu_workers hosts:  vllm_version (when a host overrides the role's pinned release),
                      vllm_engine_args and each instance's args (max-num-seqs and what
                      vLLM's default depends on), vllm_device (default auto)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from postcheck import defaults
from postcheck.capacity import instance_capacity
from postcheck.fleet import (
    Fleet,
    Gateway,
    GatewayPool,
    UsageError,
    Worker,
    format_host,
    normalize_url,
    parse_duration,
    split_listen_address,
)

INVENTORY_TIMEOUT_S = 120


def find_tool(name: str) -> str:
    """The Ansible executable next to this Python (its venv) first, then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise UsageError(
            f"{name} not found next to {sys.executable} nor on PATH (install ansible-core)"
        )
    return found


def _run(argv: list[str], what: str) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=INVENTORY_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # no controlling terminal: Ansible cannot prompt
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"{what} failed: {exc}") from None
    if proc.returncode != 0:
        err = proc.stderr.strip().splitlines()
        raise UsageError(f"{what} failed (exit {proc.returncode}): {' | '.join(err[-5:])}")
    return proc


def run_ansible_inventory(
    inventory: str, vault_password_file: str | None
) -> tuple[dict[str, Any], list[str]]:
    """(the --list JSON, ansible-inventory's warnings: it exits 0 on an unparsable source)."""
    argv = [find_tool("ansible-inventory"), "-i", inventory, "--list"]
    if vault_password_file:
        argv += ["--vault-password-file", vault_password_file]
    proc = _run(argv, f"ansible-inventory -i {inventory}")
    warnings = [line.strip() for line in proc.stderr.splitlines() if "WARNING" in line]
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise UsageError(f"ansible-inventory printed no JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError("ansible-inventory printed no JSON object")
    return data, warnings


def decrypt_vault(ciphertext: str, vault_password_file: str | None, what: str) -> str:
    """Plain text of an inline-vaulted value (ansible-inventory --list leaves them encrypted)."""
    with tempfile.TemporaryDirectory(prefix="postcheck-") as tmp:
        path = Path(tmp) / "value.vault"
        path.write_text(ciphertext)
        argv = [find_tool("ansible-vault"), "decrypt", "--output", "-", str(path)]
        if vault_password_file:
            argv += ["--vault-password-file", vault_password_file]
        try:
            return _run(argv, f"decrypting {what} with ansible-vault").stdout.rstrip("\n")
        except UsageError as exc:
            raise UsageError(
                f"{exc}\n  {what} is vault-encrypted: give --vault-password-file (or set "
                "ANSIBLE_VAULT_PASSWORD_FILE), or pass the key with --api-key-env"
            ) from None


def group_hosts(data: Mapping[str, Any], group: str) -> list[str]:
    """Hosts of a group and of its child groups, in inventory order, without duplicates."""
    seen: list[str] = []
    visiting: set[str] = set()

    def walk(name: str) -> None:
        if name in visiting:
            return
        visiting.add(name)
        entry = data.get(name)
        if not isinstance(entry, Mapping):
            return
        for host in entry.get("hosts", []) or []:
            if host not in seen:
                seen.append(str(host))
        for child in entry.get("children", []) or []:
            walk(str(child))

    walk(group)
    return seen


def _plain(value: Any, what: str) -> Any:
    """Refuse values ansible-inventory does not resolve: Jinja templates, vaulted non-secrets."""
    if isinstance(value, str) and ("{{" in value or "{%" in value):
        raise UsageError(
            f"{what} is a Jinja template ({value!r}): ansible-inventory does not render "
            "templates, so the post-check cannot know the value; set it literally"
        )
    if isinstance(value, Mapping) and "__ansible_vault" in value:
        raise UsageError(f"{what} is vault-encrypted; only vllm_api_key may be")
    return value


def host_address(name: str, hostvars: Mapping[str, Any]) -> str:
    address = _plain(hostvars.get("ansible_host", name), f"ansible_host of {name}")
    return str(address)


def _listen_target(
    name: str, hostvars: Mapping[str, Any], var: str, default: str
) -> tuple[str, int]:
    raw = _plain(hostvars.get(var, default), f"{var} of {name}")
    try:
        host, port = split_listen_address(str(raw))
    except UsageError as exc:
        raise UsageError(f"{var} of {name}: {exc}") from None
    if host in defaults.WILDCARD_HOSTS:
        host = host_address(name, hostvars)
    return host, port


def _instances(name: str, hostvars: Mapping[str, Any]) -> list[tuple[str, int, str, Any]]:
    raw = _plain(hostvars.get("vllm_instances"), f"vllm_instances of {name}")
    if raw is None:
        raise UsageError(
            f"host {name} of group {defaults.GPU_WORKERS_GROUP} has no vllm_instances hostvar"
        )
    if not isinstance(raw, Sequence) or isinstance(raw, str) or not raw:
        raise UsageError(f"vllm_instances of {name} must be a non-empty list of mappings")
    out: list[tuple[str, int, str, Any]] = []
    for i, item in enumerate(raw):
        where = f"vllm_instances[{i}] of {name}"
        if not isinstance(item, Mapping):
            raise UsageError(f"{where} is not a mapping")
        inst = str(_plain(item.get("name", ""), f"{where}.name"))
        port = _plain(item.get("port"), f"{where}.port")
        try:
            port_n = int(port)
        except (TypeError, ValueError):
            port_n = 0
        if not inst or not 0 < port_n < 65536:
            raise UsageError(f"{where} needs a name and a port 1..65535 (got {dict(item)!r})")
        model = _plain(
            item.get("served_model_name", item.get("model")), f"{where}.served_model_name"
        )
        if isinstance(model, Sequence) and not isinstance(model, str):
            model = model[0] if model else None  # vLLM's model_name label is the first name
        if not model:
            raise UsageError(f"{where} has neither served_model_name nor model")
        out.append((inst, port_n, str(model), _plain(item.get("args") or {}, f"{where}.args")))
    return out


def _capacity(host: str, inst: str, hostvars: Mapping[str, Any], args: Any) -> tuple[int, str]:
    """Like the vllm role's unit: vllm_engine_args | combine(the instance's args)."""
    base = _plain(hostvars.get("vllm_engine_args") or {}, f"vllm_engine_args of {host}")
    if not isinstance(base, Mapping) or not isinstance(args, Mapping):
        raise UsageError(f"vllm_engine_args and the args of {host}/{inst} must be mappings")
    device = str(_plain(hostvars.get("vllm_device", "auto"), f"vllm_device of {host}"))
    return instance_capacity({**base, **args}, device, f"{host}/{inst}")


def _api_key(name: str, hostvars: Mapping[str, Any], vault_password_file: str | None) -> str | None:
    raw = hostvars.get("vllm_api_key")
    if raw is None or raw == "":
        return None
    if isinstance(raw, Mapping) and "__ansible_vault" in raw:
        return decrypt_vault(
            str(raw["__ansible_vault"]), vault_password_file, f"vllm_api_key of {name}"
        )
    return str(_plain(raw, f"vllm_api_key of {name}"))


def _prometheus_auth(
    mon: str, hostvars: Mapping[str, Any], vault_password_file: str | None
) -> tuple[str, str] | None:
    """The first of prometheus_web_basic_auth_users (by name), as the role scrapes itself."""
    users = hostvars.get("prometheus_web_basic_auth_users")
    if not isinstance(users, Mapping) or not users:
        return None
    user = sorted(str(u) for u in users)[0]
    raw = users[user]
    if isinstance(raw, Mapping) and "__ansible_vault" in raw:
        what = f"prometheus_web_basic_auth_users.{user} of {mon}"
        return user, decrypt_vault(str(raw["__ansible_vault"]), vault_password_file, what)
    return user, str(_plain(raw, f"prometheus_web_basic_auth_users.{user} of {mon}"))


def _gateways(
    data: Mapping[str, Any],
    hv: Callable[[str], Mapping[str, Any]],
    api_key: Callable[[str], str | None],
) -> tuple[Gateway, ...]:
    """The gateways group, as roles/gateway renders its pools (templates/pools.json.j2): one
    pool per served model name of its worker group's vllm_instances, in their order."""
    gateways: list[Gateway] = []
    for gw in group_hosts(data, defaults.GATEWAYS_GROUP):
        v = hv(gw)

        def var(name: str, default: Any, v: Mapping[str, Any] = v, gw: str = gw) -> Any:
            return _plain(v.get(name, default), f"{name} of {gw}")

        group = str(var("gateway_worker_group", defaults.GATEWAY_WORKER_GROUP))
        overrides = var("gateway_pool_overrides", {}) or {}
        pools: dict[str, list[Any]] = {}
        for host in group_hosts(data, group):
            for inst, _, model, args in _instances(host, hv(host)):
                capacity, _ = _capacity(host, inst, hv(host), args)
                pool = pools.setdefault(model, [0, api_key(host)])
                pool[0] += capacity
        if not pools:
            raise UsageError(f"gateway {gw}: its gateway_worker_group {group!r} has no hosts")
        address = format_host(host_address(gw, v))
        ports = [var("gateway_api_port", defaults.GATEWAY_API_PORT),
                 var("gateway_metrics_port", defaults.GATEWAY_METRICS_PORT)]
        try:
            api_port, metrics_port = (int(p) for p in ports)
            queue = int(var("gateway_queue_size", defaults.GATEWAY_QUEUE_SIZE))
        except (TypeError, ValueError):
            raise UsageError(
                f"gateway {gw}: gateway_api_port, gateway_metrics_port and gateway_queue_size "
                f"must be numbers (got {ports!r})"
            ) from None
        gateways.append(
            Gateway(
                label=gw,
                base_url=f"http://{address}:{api_port}",
                metrics_url=f"http://{address}:{metrics_port}/metrics",
                pools=tuple(
                    GatewayPool(
                        model=model,
                        capacity=capacity,
                        queue_size=int((overrides.get(model) or {}).get("queue_size", queue)),
                        api_key=key,
                    )
                    for model, (capacity, key) in pools.items()
                ),
            )
        )
    return tuple(gateways)


def fleet_from_inventory(
    data: Mapping[str, Any],
    *,
    source: str,
    vault_password_file: str | None = None,
    api_key_override: str | None = None,
) -> Fleet:
    meta = data.get("_meta")
    all_hostvars = meta.get("hostvars", {}) if isinstance(meta, Mapping) else {}

    def hv(host: str) -> Mapping[str, Any]:
        v = all_hostvars.get(host, {})
        return v if isinstance(v, Mapping) else {}

    worker_hosts = group_hosts(data, defaults.GPU_WORKERS_GROUP)
    if not worker_hosts:
        raise UsageError(f"inventory {source} has no hosts in group {defaults.GPU_WORKERS_GROUP}")
    workers: list[Worker] = []
    for host in worker_hosts:
        vars_ = hv(host)
        address = format_host(host_address(host, vars_))
        key = api_key_override or _api_key(host, vars_, vault_password_file)
        version = _plain(vars_.get("vllm_version"), f"vllm_version of {host}")
        for inst, port, model, args in _instances(host, vars_):
            capacity, capacity_source = _capacity(host, inst, vars_, args)
            workers.append(
                Worker(
                    label=f"{host}/{inst}",
                    base_url=f"http://{address}:{port}",
                    model=model,
                    api_key=key,
                    vllm_version=None if version in (None, "") else str(version),
                    capacity=capacity,
                    capacity_source=capacity_source,
                )
            )

    # Like roles/prometheus/templates/targets.j2: the host's address, the exporter's port.
    nodes: list[str] = []
    for host in group_hosts(data, "all"):
        _, port = _listen_target(
            host,
            hv(host),
            "node_exporter_web_listen_address",
            defaults.NODE_EXPORTER_WEB_LISTEN_ADDRESS,
        )
        target = f"{format_host(host_address(host, hv(host)))}:{port}"
        if target not in nodes:
            nodes.append(target)

    monitoring = group_hosts(data, defaults.MONITORING_GROUP)
    prometheus_url: str | None = None
    interval = parse_duration(defaults.PROMETHEUS_SCRAPE_INTERVAL)
    missing = (
        f"inventory has no host in group {defaults.MONITORING_GROUP} and no --prometheus was given"
    )
    grafana = GrafanaSite(
        url=None,
        missing=(
            f"inventory has no host in group {defaults.MONITORING_GROUP} and no --grafana "
            "was given"
        ),
        admin_user=None,
        dashboards=None,
        verify_tls=True,
    )
    auth: tuple[str, str] | None = None
    if monitoring:
        grafana = _grafana(monitoring[0], hv(monitoring[0]), data)
        mon = monitoring[0]
        h, port = _listen_target(
            mon, hv(mon), "prometheus_web_listen_address", defaults.PROMETHEUS_WEB_LISTEN_ADDRESS
        )
        scheme = "https" if hv(mon).get("prometheus_web_tls_cert_file") else "http"
        prometheus_url = f"{scheme}://{format_host(h)}:{port}"
        auth = _prometheus_auth(mon, hv(mon), vault_password_file)
        raw_interval = _plain(
            hv(mon).get("prometheus_scrape_interval", defaults.PROMETHEUS_SCRAPE_INTERVAL),
            f"prometheus_scrape_interval of {mon}",
        )
        try:
            interval = parse_duration(str(raw_interval))
        except UsageError as exc:
            raise UsageError(f"prometheus_scrape_interval of {mon}: {exc}") from None
    return Fleet(
        workers=tuple(workers),
        node_targets=tuple(nodes),
        prometheus_url=prometheus_url,
        scrape_interval_s=interval,
        source=source,
        prometheus_missing_reason=missing,
        grafana_url=grafana.url,
        grafana_missing_reason=grafana.missing,
        grafana_admin_user=grafana.admin_user,
        grafana_dashboards=grafana.dashboards,
        grafana_verify_tls=grafana.verify_tls,
        prometheus_auth=auth,
        gateways=_gateways(
            data, hv, lambda host: api_key_override or _api_key(host, hv(host), vault_password_file)
        ),
    )


_FALSE = frozenset({"false", "no", "off", "0", "n", "f"})
_LOOPBACK = frozenset({"127.0.0.1", "::1", "[::1]", "localhost"})


def _false(value: Any) -> bool:
    return value is False or value == 0 or str(value).strip().lower() in _FALSE


@dataclass(frozen=True)
class GrafanaSite:
    """Where the grafana role put Grafana, as the post-check reaches it."""

    url: str | None  # None: nothing to check; `missing` says why
    missing: str
    admin_user: str | None
    dashboards: tuple[str, ...] | None  # what the role provisions (file stems)
    verify_tls: bool


def _grafana(mon: str, hostvars: Mapping[str, Any], data: Mapping[str, Any]) -> GrafanaSite:
    """Grafana as the grafana role sets it up for the first monitoring host `mon`: local mode
    on `mon` (unless grafana_install_package is false), external mode at grafana_url."""

    def var(name: str, default: Any) -> Any:
        return _plain(hostvars.get(name, default), f"{name} of {mon}")

    user = str(var("grafana_admin_user", defaults.GRAFANA_ADMIN_USER))
    raw_list = var("grafana_dashboards", list(defaults.GRAFANA_DASHBOARDS))
    if not isinstance(raw_list, Sequence) or isinstance(raw_list, str):
        raise UsageError(f"grafana_dashboards of {mon} must be a list of dashboard names")
    gateway = defaults.GRAFANA_GATEWAY_DASHBOARD
    dashboards = [str(d) for d in raw_list if str(d) != gateway]
    gateway_group = str(var("grafana_gateway_group", defaults.GRAFANA_GATEWAY_GROUP))
    if group_hosts(data, gateway_group):  # like the role: only while the group has hosts
        dashboards.append(gateway)
    verify = not _false(var("grafana_validate_certs", defaults.GRAFANA_VALIDATE_CERTS))
    mode = str(var("grafana_mode", defaults.GRAFANA_MODE)).strip()
    site = GrafanaSite(None, "", user, tuple(dashboards), verify)
    if mode == "external":
        url = str(var("grafana_url", "") or "").strip()
        if not url:
            missing = f"grafana_mode=external but grafana_url of {mon} is empty"
            return replace(site, missing=missing)
        return replace(site, url=normalize_url(url, f"grafana_url of {mon}"))
    if _false(var("grafana_install_package", defaults.GRAFANA_INSTALL_PACKAGE)):
        missing = f"grafana_install_package=false: Grafana's server is not installed on {mon}"
        return replace(site, missing=missing)
    raw_port = var("grafana_http_port", defaults.GRAFANA_HTTP_PORT)
    try:
        port = int(raw_port)
    except (TypeError, ValueError):
        port = 0
    if not 0 < port < 65536:
        raise UsageError(f"grafana_http_port of {mon} is not a port 1..65535: {raw_port!r}")
    addr = str(var("grafana_http_addr", defaults.GRAFANA_HTTP_ADDR) or "").strip()
    if addr in defaults.WILDCARD_HOSTS or addr in _LOOPBACK:
        addr = host_address(mon, hostvars)  # loopback: not reachable from here anyway
    ini = var("grafana_ini", {})
    server = ini.get("server") if isinstance(ini, Mapping) else None
    scheme = server.get("protocol") if isinstance(server, Mapping) else None
    scheme = scheme if scheme in ("http", "https") else "http"
    return replace(site, url=f"{scheme}://{format_host(addr.strip('[]'))}:{port}")


def load_fleet(
    inventory: str, *, vault_password_file: str | None = None, api_key_override: str | None = None
) -> Fleet:
    if "," not in inventory and not os.path.exists(inventory):
        raise UsageError(f"inventory {inventory} does not exist")
    data, warnings = run_ansible_inventory(inventory, vault_password_file)
    try:
        return fleet_from_inventory(
            data,
            source=inventory,
            vault_password_file=vault_password_file,
            api_key_override=api_key_override,
        )
    except UsageError as exc:
        if not warnings:
            raise
        raise UsageError(f"{exc}\n  ansible-inventory warned: {' | '.join(warnings[:4])}") from None
