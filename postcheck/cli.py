"""Command line: postcheck -i INVENTORY ... or postcheck --worker URL ... --prometheus URL."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from postcheck import defaults, paths
from postcheck.capacity import from_inventory
from postcheck.dashboards import load_dashboards, panel_queries
from postcheck.fleet import Fleet, UsageError, Worker, host_port, normalize_url, parse_duration
from postcheck.grafana import GrafanaAccess
from postcheck.html_report import html_report, write_html
from postcheck.inventory import load_fleet
from postcheck.report import Reporter, junit_xml, write_json, write_junit
from postcheck.runner import Options, raise_open_files_limit, run
from postcheck.signals import SignalSet, load_signals
from postcheck.vllm_metrics import VersionPlan, pinned_version, project_uses, version_plan

TEMPLATES = paths.TEMPLATES

DESCRIPTION = """\
End-to-end post-check of a vLLM fleet: every vLLM instance, its load, its metrics in
Prometheus, and every panel of the provisioned Grafana dashboards.

Checks, in order (independent ones run concurrently; one failure never stops the others):
  prometheus       Prometheus answers its API (build info)
  health           GET /health of every instance is 200
  models           GET /v1/models lists the instance's served model name
  completion       one POST /v1/completions ("Hello", max_tokens 4) is answered
  metrics          GET /metrics is vLLM's (vllm:* series, model_name = the served model)
  metrics.families GET /version against the pinned release (roles/vllm/defaults/main.yml's
                   vllm_version, a host's vllm_version, or --expected-vllm-version): every
                   metric family templates/signals.yml and the dashboards query must be in
                   /metrics (names resolved with templates/vllm-metrics/<pinned>.txt); the
                   detail always says both versions and, if any, the missing families
  prometheus.up    up == 1 for every target the inventory implies: job vllm (one per
                   instance, host:port) and job node (every host, node_exporter's port)
  load             per instance: /metrics read twice --traffic-window apart (counters that
                   moved mean other traffic), then N completions + K invalid requests
                   (unknown model, answered 404), exactly counted. A queue probe (see
                   --queue-probe) keeps its capacity + a margin in flight (capacity =
                   max-num-seqs from the inventory's vllm_engine_args and instance args as
                   the vllm role merges them; else vLLM's own default for the device; else,
                   without an inventory, found by doubling the load until requests wait)
                   and keeps the queue filled until Prometheus has been SEEN to scrape
                   num_requests_waiting and num_requests_running above 0 for it (polled
                   during the load; without Prometheus: /metrics polls), within the whole
                   load's deadline. The others: at most 4 in flight, nothing waits.
  metrics.<signal> per instance, what templates/signals.yml expects on /metrics: counters
                   grew by exactly the completions (or invalid requests) sent (with other
                   traffic: at least that, the detail and the JSON say it is a lower bound,
                   error counters are attributed to the post-check's own failed requests
                   or reported as unknown origin); queue depth and in-flight gauges were
                   seen above 0 during the load (queue probes; elsewhere: present)
  prometheus.<signal>  the same through Prometheus (waiting up to two scrape intervals):
                   counters equal the instance's /metrics after the load (other traffic:
                   at least), max_over_time of the gauges over the load > 0, up == 1
  gateway.load     while the inventory's gateways group has hosts, after the workers' checks:
                   per gateway and pool, the same load through the gateway's API port
                   (completions + invalid requests); the first pool of each gateway keeps
                   its workers' capacity + a margin (at most its queue_size) in flight until
                   Prometheus has scraped gateway_queue_depth above 0
  gateway.metrics.<signal>, gateway.prometheus.<signal>
                   what templates/gateway-signals.yml expects, on the gateway's /metrics
                   (its metrics port) and through Prometheus (job gateway): the six
                   gateway_* families moved exactly as sent, every gateway_worker_up is 1
  dashboard        every panel query of every dashboard JSON returns data (panels whose
                   description has a line "postcheck: n/a: <reason>" are listed as SKIP; the
                   gateway dashboard's panels too while there is no gateway)
  grafana          (where Grafana runs) GET /api/health: database ok
  grafana.datasource  GET /api/datasources/uid/prometheus/health: status OK
  grafana.dashboard   every dashboard the grafana role provisions is in Grafana, found by
                   the uid of its file: GET /api/dashboards/uid/<uid> (the other files of
                   --dashboards are listed as SKIP, saying why)
                   Grafana unreachable: its check fails, the other two are skipped, the rest
                   of the post-check runs; no Grafana known: all three listed as SKIP

Output: one line per check "PASS|FAIL|SKIP  name  target  detail", then "N passed, M failed";
--json writes every check and a summary, --junit the same as JUnit XML for CI systems.
Every instance is loaded at once from one asyncio event loop (aiohttp, a connection pool per
instance), within the open-files limit; Prometheus is polled for all instances together.
Timeouts: the checks' requests --timeout (default 30s); a load request's timeout comes from
the single completion's measured time x the load's tokens / 4 x (in flight / capacity + 1)
x 8 (a full batch decodes slower), at least 15s, at most the load deadline (--timeout
overrides it); the whole load ends by --load-deadline. A slow fleet gets longer timeouts; a
worker that stops answering fails its load, named, when its requests time out.
"""

EPILOG = """\
inventory hostvars read (defaults mirror the roles' defaults/main.yml):
  gpu_workers hosts   ansible_host, vllm_instances (name, port, served_model_name or model),
                      vllm_api_key (sent as Bearer, never printed; a vaulted value is
                      decrypted with ansible-vault), vllm_version (the host's own pinned
                      release; default: roles/vllm/defaults/main.yml's)
  every host          node_exporter_web_listen_address (its port; default 0.0.0.0:9100)
  first monitoring    prometheus_web_listen_address (default 0.0.0.0:9090; host 0.0.0.0
                      means the host's ansible_host), prometheus_scrape_interval (default 15s),
                      grafana_mode (default local: Grafana at http://<grafana_http_addr, or
                      ansible_host for 0.0.0.0>:<grafana_http_port, default 3000>, https if
                      grafana_ini.server.protocol says so; external: at grafana_url, with
                      grafana_validate_certs), grafana_install_package (default true; false
                      in local mode: the Grafana checks are listed as SKIP),
                      grafana_dashboards (default vllm-fleet, gpu-host), grafana_gateway_group
                      (default gateways: with hosts, the gateway dashboard too),
                      grafana_admin_user (default admin; the user when only the password
                      variable is set)
Prometheus targets are matched on instance="<ansible_host or name>:<port>".

Grafana credentials come from the environment only: $GRAFANA_USER and $GRAFANA_PASSWORD, or
a service account token in $GRAFANA_TOKEN (or the variables --grafana-user-env,
--grafana-password-env, --grafana-token-env name); they are never printed. Without them
Grafana is asked anonymously (/api/health needs no login).

exit status: 0 every check passed (skips allowed), 1 a check failed,
2 bad usage or input (no workers in the inventory, bad URL, unreadable file, no metric
family list for the pinned vLLM release, contradictory load options such as a --queue-probe
naming an unknown model or a --load-deadline shorter than --timeout), before any request.

examples:
  postcheck -i inventory/lab --json postcheck.json --junit postcheck.xml
  postcheck --worker http://10.0.0.5:8000,tiny --worker http://10.0.0.6:8000 \\
            --prometheus http://10.0.0.2:9090 --node-exporter 10.0.0.5:9100
  GRAFANA_USER=admin GRAFANA_PASSWORD=... postcheck -i inventory/prod \\
            --grafana http://10.0.0.2:3000 --expected-vllm-version 0.32.0
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own errors: usage + exit 2, no traceback
        raise UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more: {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        return parse_duration(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _queue_probe(text: str) -> str:
    text = text.strip()
    if text in ("all", "per-model"):
        return text
    if text.startswith("model:"):
        if not [n for n in text[len("model:") :].split(",") if n.strip()]:
            raise argparse.ArgumentTypeError(f"model: names no model: {text!r}")
        return text
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not all, per-model, a number or model:NAME,...: {text!r}"
        ) from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {text!r}")
    return str(count)


def check_load_options(args: argparse.Namespace, fleet: Fleet) -> None:
    """Contradictory or impossible load options: refused before any request is sent."""
    if args.queue_probe.startswith("model:"):
        names = [n.strip() for n in args.queue_probe[len("model:") :].split(",") if n.strip()]
        known = sorted({w.model for w in fleet.workers if w.model})
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UsageError(
                f"--queue-probe {args.queue_probe}: no instance serves {', '.join(unknown)} "
                f"(served: {', '.join(known) or 'none named'})"
            )
    if args.concurrency is not None:
        small = [
            f"{w.label} ({w.capacity_source})"
            for w in fleet.workers
            if from_inventory(w.capacity_source) and w.capacity and args.concurrency <= w.capacity
        ]
        if small:
            raise UsageError(
                f"--concurrency {args.concurrency} does not exceed the capacity of "
                f"{', '.join(small[:3])}: requests would never wait"
            )
    deadline = args.load_deadline
    if deadline is not None:
        if args.timeout is not None and deadline < args.timeout:
            raise UsageError(
                f"--load-deadline {deadline:g} is shorter than one completion may take "
                f"(--timeout {args.timeout:g})"
            )
        if args.load_seconds and deadline < args.load_seconds:
            raise UsageError(
                f"--load-deadline {deadline:g} is shorter than --load-seconds "
                f"{args.load_seconds:g}"
            )
        scrapes = 2 * fleet.scrape_interval_s
        if fleet.prometheus_url and deadline <= scrapes:
            raise UsageError(
                f"--load-deadline {deadline:g} leaves Prometheus no time to scrape the queue "
                f"(two scrape intervals: {scrapes:g}s)"
            )


def _seconds_or_zero(text: str) -> float:
    return 0.0 if text.strip() in ("0", "0s", "0.0") else _seconds(text)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="postcheck",
        usage="%(prog)s (-i INVENTORY | --worker URL[,MODEL] ...) [options]",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_argument_group("what to check (one of)")
    src.add_argument(
        "-i",
        "--inventory",
        metavar="INVENTORY",
        help="Ansible inventory (file or folder), read with ansible-inventory --list",
    )
    src.add_argument(
        "--worker",
        action="append",
        default=[],
        metavar="URL[,MODEL]",
        help="a vLLM instance, e.g. http://10.0.0.5:8000,tiny (repeatable); without "
        "MODEL the first model /v1/models lists is used",
    )
    src.add_argument(
        "--prometheus",
        metavar="URL",
        help="Prometheus base URL (overrides the inventory's); without it and without "
        "an inventory, the Prometheus and dashboard checks are skipped",
    )
    src.add_argument(
        "--grafana",
        metavar="URL",
        help="Grafana base URL (overrides the inventory's); without it and without an "
        "inventory whose monitoring host runs Grafana, the Grafana checks are skipped",
    )
    src.add_argument(
        "--node-exporter",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="with --worker: a node_exporter target Prometheus must have up (repeatable)",
    )
    load = p.add_argument_group("load")
    load.add_argument(
        "--requests",
        type=_positive_int,
        default=defaults.REQUESTS,
        metavar="N",
        help=f"completions per instance, at least (default {defaults.REQUESTS}); a queue "
        "probe sends more until its queue is proven",
    )
    load.add_argument(
        "--concurrency",
        type=_positive_int,
        metavar="C",
        help="requests in flight per queue probe (default: its capacity + a margin, e.g. "
        "260 for max-num-seqs 256); must exceed the inventory's max-num-seqs",
    )
    load.add_argument(
        "--queue-probe",
        type=_queue_probe,
        default=defaults.QUEUE_PROBE,
        metavar="all|per-model|N|model:NAME,...",
        help="instances whose queue is filled and proven: every one, one canary per served "
        "model, N of them (one per model in turn), or one canary of each named model; the "
        "others get the counter load, and every check but the gauges' above-0 one. "
        f"Default {defaults.QUEUE_PROBE}: on a 500-GPU fleet after a rolling change each "
        "model's instances run the same release and flags, so one canary per model proves "
        "the queue signal end to end, while filling 500 queues of 1024 slots would be a "
        "fleet-wide load test on production",
    )
    load.add_argument(
        "--max-tokens",
        type=_positive_int,
        default=defaults.LOAD_MAX_TOKENS,
        metavar="T",
        help=f"tokens each load completion generates, EOS ignored (default "
        f"{defaults.LOAD_MAX_TOKENS}): long requests keep the queue filled between scrapes",
    )
    load.add_argument(
        "--invalid",
        type=_count,
        default=defaults.INVALID_REQUESTS,
        metavar="K",
        help=f"invalid requests (unknown model) per instance (default "
        f"{defaults.INVALID_REQUESTS})",
    )
    load.add_argument(
        "--load-seconds",
        type=_seconds_or_zero,
        metavar="S",
        help="load each instance at least this long (default: no minimum; a queue probe "
        "runs until Prometheus has seen its queue)",
    )
    load.add_argument(
        "--load-deadline",
        type=_seconds,
        metavar="S",
        help=f"the whole load ends by then: requests still unanswered fail (default "
        f"{defaults.LOAD_DEADLINE_MIN_S:g}s + {defaults.LOAD_DEADLINE_SCRAPES} scrape "
        "intervals)",
    )
    load.add_argument(
        "--traffic-window",
        type=_seconds,
        default=defaults.TRAFFIC_WINDOW_S,
        metavar="S",
        help=f"seconds between the two reads of each /metrics before the load that detect "
        f"other traffic (default {defaults.TRAFFIC_WINDOW_S:g})",
    )
    misc = p.add_argument_group("other")
    misc.add_argument(
        "--timeout",
        type=_seconds,
        metavar="S",
        help=f"seconds one HTTP request may take, load requests included (default: "
        f"{defaults.TIMEOUT_S:g} for the checks' requests; for load requests from the single "
        "completion's measured time, see above)",
    )
    misc.add_argument(
        "--scrape-interval",
        type=_seconds,
        metavar="DURATION",
        help="Prometheus scrape interval (default: the inventory's "
        f"prometheus_scrape_interval, else {defaults.PROMETHEUS_SCRAPE_INTERVAL})",
    )
    misc.add_argument("--json", metavar="FILE", help="write the JSON report there")
    misc.add_argument(
        "--junit",
        metavar="FILE",
        help="write a JUnit XML report there (a testcase per check, classname = the check "
        "name's first segment; failures and skips with their detail)",
    )
    misc.add_argument(
        "--html",
        metavar="FILE",
        help="write a self-contained HTML report there: summary, checks, signals per "
        "instance, and every dashboard panel drawn from Prometheus over the run",
    )
    misc.add_argument(
        "--grafana-user-env",
        metavar="VAR",
        help=f"read the Grafana user from this environment variable (default "
        f"{defaults.GRAFANA_USER_ENV})",
    )
    misc.add_argument(
        "--grafana-password-env",
        metavar="VAR",
        help=f"read the Grafana password from this environment variable (default "
        f"{defaults.GRAFANA_PASSWORD_ENV}); it is never printed",
    )
    misc.add_argument(
        "--grafana-password-file",
        metavar="FILE",
        type=Path,
        help="read the Grafana password from the first line of this file (keep it mode 0600); "
        "wins over the environment. Neither the file's content nor the password is printed",
    )
    misc.add_argument(
        "--grafana-token-env",
        metavar="VAR",
        help=f"read a Grafana service account token from this environment variable "
        f"(default {defaults.GRAFANA_TOKEN_ENV}); used instead of user and password when set",
    )
    misc.add_argument(
        "--grafana-dashboards",
        metavar="NAMES",
        help="dashboards Grafana must have, comma-separated file names without .json "
        "(default: the inventory's grafana_dashboards, plus gateway while the gateways group "
        f"has hosts, like the grafana role; else {','.join(defaults.GRAFANA_DASHBOARDS)})",
    )
    misc.add_argument(
        "--expected-vllm-version",
        metavar="VERSION",
        help="the vLLM release every instance should run (default: vllm_version of "
        "roles/vllm/defaults/main.yml, or a host's own vllm_version hostvar)",
    )
    misc.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="read the vLLM API key from this environment variable (overrides vllm_api_key)",
    )
    misc.add_argument(
        "--vault-password-file",
        metavar="FILE",
        help="to decrypt a vault-encrypted vllm_api_key (or set ANSIBLE_VAULT_PASSWORD_FILE)",
    )
    misc.add_argument(
        "--vllm-job",
        default=defaults.VLLM_JOB,
        metavar="JOB",
        help=f"Prometheus job of the vLLM instances (default {defaults.VLLM_JOB})",
    )
    misc.add_argument(
        "--node-job",
        default=defaults.NODE_JOB,
        metavar="JOB",
        help=f"Prometheus job of node_exporter (default {defaults.NODE_JOB})",
    )
    misc.add_argument(
        "--gateway-job",
        default=defaults.GATEWAY_JOB,
        metavar="JOB",
        help=f"Prometheus job of the gateways (default {defaults.GATEWAY_JOB})",
    )
    misc.add_argument(
        "--dashboards",
        type=Path,
        default=TEMPLATES / "dashboards",
        metavar="DIR",
        help="folder of Grafana dashboard JSON files (default: the repo's templates/dashboards)",
    )
    misc.add_argument(
        "--signals",
        type=Path,
        default=TEMPLATES / "signals.yml",
        metavar="FILE",
        help="signal definitions (default: the repo's templates/signals.yml)",
    )
    misc.add_argument(
        "--gateway-signals",
        type=Path,
        default=paths.GATEWAY_SIGNALS,
        metavar="FILE",
        help="the gateway's signal definitions (default: the repo's "
        "templates/gateway-signals.yml)",
    )
    misc.add_argument(
        "--vllm-metrics",
        type=Path,
        default=paths.VLLM_METRICS,
        metavar="DIR",
        help="metric family lists, one <version>.txt per vLLM release (default: the repo's "
        "templates/vllm-metrics)",
    )
    return p


def _api_key(args: argparse.Namespace) -> str | None:
    if not args.api_key_env:
        return None
    key = os.environ.get(args.api_key_env)
    if not key:
        raise UsageError(
            f"--api-key-env {args.api_key_env}: that environment variable is empty or unset"
        )
    return key


def fleet_from_args(args: argparse.Namespace) -> Fleet:
    key = _api_key(args)
    if args.inventory and (args.worker or args.node_exporter):
        raise UsageError("give either -i INVENTORY or --worker/--node-exporter, not both")
    if args.inventory:
        fleet = load_fleet(
            args.inventory, vault_password_file=args.vault_password_file, api_key_override=key
        )
    elif args.worker:
        workers = []
        for spec in args.worker:
            url, _, model = spec.partition(",")
            url = normalize_url(url, "--worker")
            workers.append(
                Worker(label=host_port(url), base_url=url, model=model.strip() or None, api_key=key)
            )
        nodes = []
        for n in args.node_exporter:
            nodes.append(host_port(normalize_url(n, "--node-exporter")))
        fleet = Fleet(
            workers=tuple(workers),
            node_targets=tuple(nodes),
            prometheus_url=None,
            scrape_interval_s=parse_duration(defaults.PROMETHEUS_SCRAPE_INTERVAL),
            source="command line",
            prometheus_missing_reason="no --prometheus given",
        )
    else:
        raise UsageError("nothing to check: give -i INVENTORY or at least one --worker URL")
    changes: dict[str, Any] = {}
    if args.prometheus:
        changes["prometheus_url"] = normalize_url(args.prometheus, "--prometheus")
    if args.grafana:
        url = normalize_url(args.grafana, "--grafana")
        if "@" in url.split("://", 1)[1].split("/", 1)[0]:
            raise UsageError(
                "--grafana URL carries credentials: put them in $GRAFANA_USER and "
                "$GRAFANA_PASSWORD instead (they are never printed)"
            )
        changes["grafana_url"] = url
    if args.scrape_interval:
        changes["scrape_interval_s"] = args.scrape_interval
    if changes:
        fleet = replace(fleet, **changes)
    labels = [w.label for w in fleet.workers]
    if len(set(labels)) != len(labels):
        raise UsageError(f"the same vLLM instance is listed twice: {labels}")
    return fleet


def _env(var: str, explicit: bool, option: str) -> str | None:
    value = os.environ.get(var) or None
    if explicit and value is None:
        raise UsageError(f"{option} {var}: that environment variable is empty or unset")
    return value


def grafana_access(args: argparse.Namespace, fleet: Fleet) -> GrafanaAccess:
    user_var = args.grafana_user_env or defaults.GRAFANA_USER_ENV
    password_var = args.grafana_password_env or defaults.GRAFANA_PASSWORD_ENV
    token_var = args.grafana_token_env or defaults.GRAFANA_TOKEN_ENV
    if args.grafana_dashboards is not None:
        dashboards = tuple(d.strip() for d in args.grafana_dashboards.split(",") if d.strip())
        source = "--grafana-dashboards"
    elif fleet.grafana_dashboards is not None:
        dashboards, source = fleet.grafana_dashboards, "the inventory's grafana_dashboards"
    else:
        dashboards = defaults.GRAFANA_DASHBOARDS
        source = "the grafana role's default grafana_dashboards"
    common: dict[str, Any] = {
        "user_var": user_var,
        "password_var": password_var,
        "token_var": token_var,
        "dashboards": dashboards,
        "dashboards_from": source,
        "verify_tls": fleet.grafana_verify_tls,
    }
    if fleet.grafana_url is None:
        return GrafanaAccess(None, fleet.grafana_missing_reason, **common)
    token = _env(token_var, bool(args.grafana_token_env), "--grafana-token-env")
    user = _env(user_var, bool(args.grafana_user_env), "--grafana-user-env")
    password = _env(password_var, bool(args.grafana_password_env), "--grafana-password-env")
    if args.grafana_password_file is not None:
        try:
            password = args.grafana_password_file.read_text().splitlines()[0]
        except (OSError, IndexError):
            raise UsageError(
                f"--grafana-password-file {args.grafana_password_file}: cannot read a password"
            ) from None
    if token:
        return GrafanaAccess(fleet.grafana_url, "", None, None, token=token, **common)
    if password and not user:
        user = fleet.grafana_admin_user or defaults.GRAFANA_ADMIN_USER
    if user and not password:
        raise UsageError(
            f"${user_var} is set but ${password_var} is empty: give both (or a token in "
            f"${token_var}), or none to ask Grafana anonymously"
        )
    return GrafanaAccess(fleet.grafana_url, "", user, password, **common)


def versions_plan(args: argparse.Namespace, fleet: Fleet, signals: SignalSet) -> VersionPlan:
    if args.expected_vllm_version:
        default, source = args.expected_vllm_version.strip(), "--expected-vllm-version"
    else:
        default = pinned_version(paths.VLLM_ROLE_DEFAULTS)
        source = str(paths.VLLM_ROLE_DEFAULTS.relative_to(paths.REPO))
    dashboards, _ = load_dashboards(args.dashboards)
    uses = project_uses(
        (m.name for s in signals.signals for m in s.metrics if m.kind != "up"),
        args.signals.name,
        {d.file: [q.expr for q in panel_queries(d)[0]] for d in dashboards},
    )
    return version_plan(
        args.vllm_metrics,
        default,
        source,
        bool(args.expected_vllm_version),
        (w.vllm_version for w in fleet.workers),
        uses,
    )


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = build_parser()
    args: argparse.Namespace | None = None
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        fleet = fleet_from_args(args)
        signals = load_signals(args.signals)
        load_dashboards(args.dashboards)  # the folder must exist; broken files fail later as checks
        grafana = grafana_access(args, fleet)
        check_load_options(args, fleet)
        options = Options(
            requests=args.requests,
            concurrency=args.concurrency,
            invalid=args.invalid,
            max_tokens=args.max_tokens,
            timeout_s=args.timeout or defaults.TIMEOUT_S,
            load_timeout_s=args.timeout,
            load_seconds=args.load_seconds,
            queue_probe=args.queue_probe,
            load_deadline_s=args.load_deadline,
            traffic_window_s=args.traffic_window,
            vllm_job=args.vllm_job,
            node_job=args.node_job,
            dashboards_dir=args.dashboards,
            signals=signals,
            gateway_signals=load_signals(args.gateway_signals) if fleet.gateways else None,
            gateway_job=args.gateway_job,
            versions=versions_plan(args, fleet, signals),
            grafana=grafana,
        )
        secrets = [*fleet.secrets, *(x for x in (grafana.password, grafana.token) if x)]
        reporter = Reporter(out, secrets=secrets)
        raise_open_files_limit()
        extra = run(fleet, options, reporter)
    except UsageError as exc:
        print(
            f"usage: {parser.usage.replace('%(prog)s', parser.prog) if parser.usage else ''}",
            file=sys.stderr,
        )
        print(f"postcheck: error: {exc}", file=sys.stderr)
        if args is not None and args.json:
            _try_write(args.json, {"summary": {"error": str(exc), "exit_code": 2}, "checks": []})
        if args is not None and args.junit:
            _try_write(args.junit, junit_xml([], error=str(exc)), write_junit)
        return 2
    except KeyboardInterrupt:
        print("postcheck: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug outside any check: say so in one line, no traceback
        print(f"postcheck: error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(reporter.summary_table(), file=out)
    print(reporter.summary_line(), file=out, flush=True)
    report = reporter.to_json(extra)
    if args.json and not _try_write(args.json, report):
        return 2
    if args.junit:
        xml = junit_xml(
            reporter.checks(),
            timestamp=str(extra.get("started")),
            duration=float(extra.get("duration", 0.0)),
            properties={"source": fleet.source, "prometheus": fleet.prometheus_url or "-"},
        )
        if not _try_write(args.junit, xml, write_junit):
            return 2
    if args.html:
        page = html_report(report, fleet, options, time.time())
        if not _try_write(args.html, page, write_html):
            return 2
    return reporter.exit_code()


def _try_write(path: str, payload: Any, write: Callable[[str, Any], None] = write_json) -> bool:
    """Write a report file; a path that cannot be written is said in one line, not raised."""
    try:
        write(path, payload)
    except OSError as exc:
        print(f"postcheck: error: cannot write {path}: {exc}", file=sys.stderr)
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
