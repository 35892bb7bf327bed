"""The post-check end to end against a fake vLLM fleet and a fake Prometheus."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST, TEMPLATES, Result, dashboard_checks, write_inventory
from fakes import FakeGrafana, FakePrometheus, FakeVLLM

RunPostcheck = Callable[..., Result]


def lab_inventory(
    tmp_path: Path,
    vllms: list[FakeVLLM],
    prom: FakePrometheus | None,
    grafana: FakeGrafana | None = None,
    **extra: Any,
) -> Path:
    """Two worker hosts on 127.0.0.1 (their node_exporters on distinct fake ports); the
    monitoring host runs Grafana only when `grafana` is given (grafana_install_package)."""
    hosts: dict[str, Any] = {}
    for i, v in enumerate(vllms):
        hosts[f"w{i}"] = {
            "ansible_host": "127.0.0.1",
            "node_exporter_web_listen_address": f"0.0.0.0:{9100 + i}",
            "vllm_instances": [
                {
                    "name": "main",
                    "port": v.port,
                    "model": "/srv/models/x",
                    "served_model_name": v.model,
                }
            ],
            **extra,
        }
    groups: dict[str, Any] = {"gpu_workers": {"hosts": hosts}}
    if prom is not None:
        groups["monitoring"] = {
            "hosts": {
                "mon": {
                    "ansible_host": "127.0.0.1",
                    "prometheus_web_listen_address": f"0.0.0.0:{prom.port}",
                    "prometheus_scrape_interval": "200ms",
                    "node_exporter_web_listen_address": "0.0.0.0:9200",
                    **(
                        {"grafana_http_port": grafana.port}
                        if grafana is not None
                        else {"grafana_install_package": False}
                    ),
                }
            }
        }
    return write_inventory(tmp_path, {"all": {"children": groups}})


def fast_without_interval() -> list[str]:
    i = FAST.index("--scrape-interval")
    return FAST[:i] + FAST[i + 2 :]


def test_full_pass_against_fake_vllm_from_inventory(
    tmp_path: Path,
    fake_vllm: Callable[..., FakeVLLM],
    fake_prometheus: Callable[..., FakePrometheus],
    fake_grafana: Callable[..., FakeGrafana],
    run_postcheck: RunPostcheck,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vllms = [fake_vllm(model="tiny"), fake_vllm(model="tiny")]
    prom = fake_prometheus(vllms, ("127.0.0.1:9100", "127.0.0.1:9101", "127.0.0.1:9200"))
    grafana = fake_grafana(password="graf-pw-0123")
    monkeypatch.setenv("GRAFANA_PASSWORD", "graf-pw-0123")  # user: grafana_admin_user's default
    # the fakes run 2 at once, as the inventory says (vLLM's --max-num-seqs)
    inv = lab_inventory(tmp_path, vllms, prom, grafana, vllm_engine_args={"max-num-seqs": 2})

    r = run_postcheck("-i", str(inv), *fast_without_interval())

    assert r.code == 0, r.out
    assert r.by_status("fail") == []
    summary = r.report["summary"]
    assert summary["failed"] == 0 and summary["exit_code"] == 0
    queries, na_panels, slo_queries = dashboard_checks()
    # skipped: only the panels marked n/a, the SLO rows (no SLO: Grafana repeats them zero
    # times) and the dashboards the grafana role does not provision on this fleet (the
    # gateway's, without gateways)
    skipped = r.by_status("skip")
    assert all(
        (c["name"] == "dashboard" and c["detail"].startswith("n/a: "))
        or (c["name"] == "grafana.dashboard" and "not provisioned here" in c["detail"])
        for c in skipped
    ), skipped
    assert summary["passed"] == summary["total"] - len(skipped) > 40
    assert len([c for c in skipped if c["name"] == "dashboard"]) == na_panels + slo_queries
    assert len([c for c in skipped if "repeats over $slo_model" in c["detail"]]) == slo_queries
    assert summary["scrape_interval_s"] == 0.2  # read from the inventory
    assert summary["workers"] == ["w0/main", "w1/main"]
    for check in r.report["checks"]:
        assert set(check) == {"name", "target", "status", "detail", "duration"}
    # every kind of check ran, per instance where it applies
    for name in ("health", "models", "completion", "metrics", "load"):
        assert {c["target"] for c in r.checks(name, "pass")} == {"w0/main", "w1/main"}
    ups = {c["target"] for c in r.checks("prometheus.up", "pass")}
    assert ups == {f"vllm/{v.instance}" for v in vllms} | {
        "node/127.0.0.1:9100",
        "node/127.0.0.1:9101",
        "node/127.0.0.1:9200",
    }
    # exact counter deltas: what was sent is what vLLM counted
    for v in vllms:
        load = summary["load"]["instances"][f"w{vllms.index(v)}/main"]
        assert load["completions_ok"] == load["completions_sent"] >= 6
        assert load["invalid_sent"] == load["invalid_4xx"] == 2
        # + the single completion check and the prefix-cache probe's two
        assert v.success["length"] == load["completions_ok"] + 1 + 2
        assert v.http[("/v1/completions", "POST", "4xx")] == load["invalid_4xx"]
        assert load["other_traffic"] is None
    # one canary per model (both serve tiny) fills its queue; the other moves counters only
    assert summary["load"]["queue_probes"] == {"tiny": "w0/main"}
    canary, other = (summary["load"]["instances"][f"w{i}/main"] for i in (0, 1))
    assert canary["queue_probe"] and canary["peaks"]["vllm:num_requests_waiting"] > 0
    assert canary["proof"] == "Prometheus" and canary["proven_after_s"] is not None
    assert canary["in_flight"] == 4  # --concurrency
    assert not other["queue_probe"] and other["in_flight"] == 2  # its capacity: nothing waits
    [gauge] = [c for c in r.checks("prometheus.queue_depth:vllm:num_requests_waiting")
               if c["target"] == "w1/main"]
    assert gauge["status"] == "pass" and "not a queue probe" in gauge["detail"]
    assert "proven on tiny: w0/main" in gauge["detail"]
    names = {c["name"] for c in r.report["checks"]}
    for signal in ("queue_depth", "queue_wait_time", "request_latency", "in_flight", "errors"):
        assert any(n.startswith(f"metrics.{signal}:") for n in names), signal
        assert any(n.startswith(f"prometheus.{signal}:") for n in names), signal
    assert "prometheus.worker_state:up" in names
    dash = r.checks("dashboard", "pass")
    assert len(dash) == queries - slo_queries
    assert any(c["target"].startswith("vllm-fleet.json > ") for c in dash)
    # Grafana at the monitoring host's grafana_http_port, with the password from the env
    assert r.checks("grafana", "pass")[0]["target"] == grafana.url
    assert r.checks("grafana.datasource", "pass") and r.checks("grafana.dashboard", "pass")
    assert "graf-pw-0123" not in r.out + json.dumps(r.report)
    # the release each instance runs against the pinned one, and the families it serves
    assert {c["target"] for c in r.checks("metrics.families", "pass")} == {"w0/main", "w1/main"}
    assert summary["vllm_version"]["instances"] == {"w0/main": "0.32.0", "w1/main": "0.32.0"}
    # the live output: one line per check, a table of counts per kind, then the summary
    lines = r.out.strip().splitlines()
    kinds = {c["name"].split(".")[0].split(":")[0] for c in r.report["checks"]}
    assert len(lines) == summary["total"] + 1 + len(kinds) + 1
    assert lines[-1].startswith(f"{summary['passed']} passed, 0 failed")
    checks_out = lines[: summary["total"]]
    assert all(line.split("  ")[0] in ("PASS", "FAIL", "SKIP") for line in checks_out)
    assert lines[summary["total"]].split() == ["check", "passed", "failed", "skipped"]


def test_stopped_worker_fails_and_others_still_run_against_fake_vllm(
    fake_vllm: Callable[..., FakeVLLM],
    fake_prometheus: Callable[..., FakePrometheus],
    run_postcheck: RunPostcheck,
) -> None:
    good, stopped = fake_vllm(), fake_vllm()
    prom = fake_prometheus([good, stopped], ("127.0.0.1:9100",))  # host panels need a node
    stopped.stop()

    r = run_postcheck(
        "--worker",
        f"{good.url},tiny",
        "--worker",
        f"{stopped.url},tiny",
        "--prometheus",
        prom.url,
        *FAST,
    )

    assert r.code == 1
    failed = r.by_status("fail")
    assert {c["target"] for c in failed} == {stopped.instance, f"vllm/{stopped.instance}"}
    health = r.checks("health", "fail")[0]
    assert "connection refused" in health["detail"]
    up = r.checks("prometheus.up", "fail")[0]
    assert "up" in up["detail"] and "= 0" in up["detail"]
    # the dependent checks of the stopped one are listed as skipped, saying why
    assert {c["name"] for c in r.by_status("skip")} >= {
        "models",
        "completion",
        "metrics",
        "load",
        "signals",
    }
    # the healthy worker was fully checked
    assert r.checks("load", "pass")[0]["target"] == good.instance
    assert all(c["status"] == "pass" for c in r.report["checks"] if c["target"] == good.instance)
    assert "Traceback" not in r.out
    assert (
        r.out.strip()
        .splitlines()[-1]
        .startswith(f"{r.report['summary']['passed']} passed, 2 failed")
    )


def test_metrics_not_from_vllm_fails_without_traceback_against_fake_vllm(
    fake_vllm: Callable[..., FakeVLLM],
    run_postcheck: RunPostcheck,
    capsys: pytest.CaptureFixture[str],
) -> None:
    impostor = fake_vllm(metrics="node")

    r = run_postcheck("--worker", impostor.url, *FAST)

    assert r.code == 1
    [metrics] = r.checks("metrics", "fail")
    assert "no vllm:* metrics" in metrics["detail"] and "not a vLLM server" in metrics["detail"]
    assert r.checks("completion", "pass")  # model taken from /v1/models
    assert "not loaded" in r.checks("load", "skip")[0]["detail"]
    assert r.checks("prometheus", "skip")  # no Prometheus given: listed, not silent
    assert "Traceback" not in r.out + capsys.readouterr().err


def test_unreachable_prometheus_fails_its_checks_others_still_run_against_fake_vllm(
    fake_vllm: Callable[..., FakeVLLM],
    run_postcheck: RunPostcheck,
) -> None:
    v = fake_vllm()

    r = run_postcheck("--worker", f"{v.url},tiny", "--prometheus", "http://127.0.0.1:9", *FAST)

    assert r.code == 1
    [prom] = r.checks("prometheus", "fail")
    assert "connection refused" in prom["detail"]
    assert r.checks("prometheus.up", "skip") and r.checks("dashboard", "skip")
    assert r.checks("prometheus.signals", "skip")
    # the worker's own checks and its load ran and passed
    for name in ("health", "models", "completion", "metrics", "load"):
        assert r.checks(name, "pass"), name
    assert any(
        c["name"].startswith("metrics.errors:") and c["status"] == "pass"
        for c in r.report["checks"]
    )


def test_wrong_api_key_is_a_clear_failure_against_fake_vllm(
    fake_vllm: Callable[..., FakeVLLM],
    run_postcheck: RunPostcheck,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    v = fake_vllm(api_key="right-key")
    monkeypatch.setenv("TEST_VLLM_KEY", "wrong-key-secret")

    r = run_postcheck("--worker", f"{v.url},tiny", "--api-key-env", "TEST_VLLM_KEY", *FAST)

    assert r.code == 1
    assert "401 Unauthorized" in r.checks("models", "fail")[0]["detail"]
    assert "wrong-key-secret" not in r.out + json.dumps(r.report)


def test_api_key_from_inventory_is_sent_against_fake_vllm(
    tmp_path: Path,
    fake_vllm: Callable[..., FakeVLLM],
    run_postcheck: RunPostcheck,
) -> None:
    v = fake_vllm(api_key="s3cret-key")
    inv = lab_inventory(tmp_path, [v], None, vllm_api_key="s3cret-key")

    r = run_postcheck("-i", str(inv), *FAST)

    assert r.code == 0, r.out
    assert r.checks("completion", "pass") and r.checks("load", "pass")
    assert "no host in group monitoring" in r.checks("prometheus", "skip")[0]["detail"]
    assert "s3cret-key" not in r.out + json.dumps(r.report)


def test_dashboard_panels_without_data_fail_and_na_panels_are_listed_against_fake_vllm(
    tmp_path: Path,
    fake_vllm: Callable[..., FakeVLLM],
    fake_prometheus: Callable[..., FakePrometheus],
    run_postcheck: RunPostcheck,
) -> None:
    v = fake_vllm()
    prom = fake_prometheus([v])
    dashboards = tmp_path / "dashboards"
    dashboards.mkdir()
    ds = {"type": "prometheus", "uid": "${datasource}"}
    dash = {
        "uid": "t",
        "title": "T",
        "templating": {"list": [{"name": "job", "type": "custom", "query": "vllm"}]},
        "panels": [
            {
                "id": 1,
                "title": "Old cache",
                "datasource": ds,
                "targets": [{"refId": "A", "expr": 'avg(vllm:gpu_cache_usage_perc{job=~"$job"})'}],
            },
            {
                "id": 2,
                "type": "row",
                "title": "GPU",
                "panels": [
                    {
                        "id": 3,
                        "title": "GPU util",
                        "datasource": ds,
                        "description": "DCGM.\npostcheck: n/a: no GPU exporter on CPU fleets",
                        "targets": [{"refId": "A", "expr": "DCGM_FI_DEV_GPU_UTIL"}],
                    }
                ],
            },
            {
                "id": 4,
                "title": "Running",
                "datasource": ds,
                "targets": [
                    {
                        "refId": "A",
                        "expr": "sum(rate(vllm:request_success_total"
                        '{job=~"$job"}[$__rate_interval]))',
                    },
                    {"refId": "B", "expr": 'sum(vllm:num_requests_running{model_name=~"$model"})'},
                ],
            },
        ],
    }
    (dashboards / "test.json").write_text(json.dumps(dash))
    (dashboards / "broken.json").write_text("{not json")

    r = run_postcheck(
        "--worker",
        f"{v.url},tiny",
        "--prometheus",
        prom.url,
        "--dashboards",
        str(dashboards),
        *FAST,
    )

    assert r.code == 1
    failed = {c["target"]: c["detail"] for c in r.checks("dashboard", "fail")}
    assert (
        'no data for avg(vllm:gpu_cache_usage_perc{job=~"vllm"})'
        in failed["test.json > Old cache [A]"]
    )
    assert "undefined variable $model" in failed["test.json > Running [B]"]
    assert "not valid JSON" in failed["broken.json"]
    [passed] = r.checks("dashboard", "pass")
    assert passed["target"] == "test.json > Running [A]" and "[60s]" in passed["detail"]
    [na] = r.checks("dashboard", "skip")
    assert (
        na["target"] == "test.json > GPU util"
        and na["detail"] == "n/a: no GPU exporter on CPU fleets"
    )
    # no --grafana given: the Grafana checks are listed as skipped too, saying why
    grafana_skips = [c for c in r.by_status("skip") if c["name"].startswith("grafana")]
    assert grafana_skips and all("no --grafana given" in c["detail"] for c in grafana_skips)
    skipped = 1 + len(grafana_skips)
    assert f"{skipped} skipped" in r.out.strip().splitlines()[-1]
    assert r.report["summary"]["skipped"] == skipped


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "nothing to check"),
        (["--worker", "ftp://x"], "bad --worker URL"),
        (["--worker", "http://127.0.0.1:notaport"], "bad --worker URL"),
        (["--worker", "http://127.0.0.1:1", "--prometheus", "http://"], "bad --prometheus URL"),
        (["--worker", "http://127.0.0.1:1", "--requests", "0"], "must be 1 or more"),
        (["--worker", "http://127.0.0.1:1", "--scrape-interval", "fast"], "not a duration"),
        (
            ["--worker", "http://127.0.0.1:1", "--signals", "/nonexistent.yml"],
            "cannot read signals",
        ),
        (["-i", "/nonexistent/inventory"], "does not exist"),
    ],
)
def test_bad_usage_exits_2_without_traceback(
    args: list[str],
    message: str,
    run_postcheck: RunPostcheck,
    capsys: pytest.CaptureFixture[str],
) -> None:
    r = run_postcheck(*args)
    err = capsys.readouterr().err
    assert r.code == 2
    assert message in err and "Traceback" not in err


def test_inventory_without_gpu_workers_exits_2(
    tmp_path: Path,
    run_postcheck: RunPostcheck,
    capsys: pytest.CaptureFixture[str],
) -> None:
    inv = write_inventory(tmp_path, {"all": {"children": {"monitoring": {"hosts": {"m": {}}}}}})

    r = run_postcheck("-i", str(inv))

    assert r.code == 2
    assert "no hosts in group gpu_workers" in capsys.readouterr().err
    assert r.report["summary"] == {"error": r.report["summary"]["error"], "exit_code": 2}


def test_help_explains_everything(capsys: pytest.CaptureFixture[str]) -> None:
    from postcheck.cli import main

    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for word in (
        "--inventory",
        "--worker",
        "--prometheus",
        "--json",
        "--requests",
        "--concurrency",
        "--invalid",
        "--timeout",
        "--load-seconds",
        "--queue-probe",
        "--load-deadline",
        "--traffic-window",
        "500-GPU",
        "max-num-seqs",
        "exit status",
        "vllm_instances",
        "prometheus_web_listen_address",
        "postcheck: n/a",
    ):
        assert word in text, word


def test_default_paths_point_into_the_repo() -> None:
    from postcheck.cli import build_parser

    args = build_parser().parse_args(["--worker", "http://x:1"])
    assert args.dashboards == TEMPLATES / "dashboards"
    assert args.signals == TEMPLATES / "signals.yml"


def test_slow_worker_times_out_and_wrong_model_fails_against_fake_vllm(
    fake_vllm: Callable[..., FakeVLLM],
    run_postcheck: RunPostcheck,
) -> None:
    slow = fake_vllm(delay=2.0)
    other = fake_vllm(model="served-name")

    r = run_postcheck(
        "--worker",
        f"{slow.url},tiny",
        "--worker",
        f"{other.url},expected-name",
        *FAST[:-4],
        "--timeout",
        "0.3",
    )

    assert r.code == 1
    completion = {c["target"]: c["detail"] for c in r.checks("completion", "fail")}
    assert completion[slow.instance].startswith("timeout: connected but no answer in time")
    assert "HTTP 404" in completion[other.instance]
    [models] = r.checks("models", "fail")
    assert (
        models["target"] == other.instance
        and "not the served model 'expected-name'" in models["detail"]
    )
    metrics = {c["target"]: c for c in r.report["checks"] if c["name"] == "metrics"}
    assert metrics[slow.instance]["status"] == "pass"
    assert (
        "model_name ['served-name'], expected 'expected-name'" in metrics[other.instance]["detail"]
    )


def test_rules_and_firing_alerts_against_fake_prometheus(
    fake_vllm: Callable[..., FakeVLLM],
    fake_prometheus: Callable[..., FakePrometheus],
    run_postcheck: RunPostcheck,
) -> None:
    v = fake_vllm()
    prom = fake_prometheus([v], ("127.0.0.1:9100",))
    prom.rule_groups = [{"name": "vllm", "rules": [
        {"name": "vllm:e2e_p95:5m", "health": "ok"},
        {"name": "VllmInstanceDown", "health": "ok"},
    ]}]
    prom.alerts = [{"state": "firing", "labels": {"alertname": "HostDiskFilling",
                                                  "instance": "10.0.0.9:9100"}},
                   {"state": "pending", "labels": {"alertname": "NotYet"}}]

    r = run_postcheck("--worker", f"{v.url},tiny", "--prometheus", prom.url, *FAST)

    assert r.code == 0, r.out
    [rules] = r.checks("prometheus.rules", "pass")
    assert rules["detail"] == "1 rule groups, 2 rules loaded, none failing"
    [alerts] = r.checks("prometheus.alerts", "pass")
    assert alerts["detail"] == "1 firing: HostDiskFilling{10.0.0.9:9100}"
    # the summary table, one row per kind of check, comes before the closing line
    lines = r.out.strip().splitlines()
    assert lines[-1].startswith(f"{r.report['summary']['passed']} passed, 0 failed")
    table = lines[lines.index(next(x for x in lines if x.split()[:2] == ["check", "passed"])):]
    assert any(row.split()[0] == "prometheus" and row.split()[2] == "0" for row in table[1:-1])

    prom.rule_groups[0]["rules"][1] = {
        "name": "VllmInstanceDown", "health": "err",
        "lastError": "vector contains metrics with the same labelset",
    }
    broken = run_postcheck("--worker", f"{v.url},tiny", "--prometheus", prom.url, *FAST)
    assert broken.code == 1
    [failed] = broken.checks("prometheus.rules", "fail")
    assert "vllm/VllmInstanceDown: vector contains" in failed["detail"]
