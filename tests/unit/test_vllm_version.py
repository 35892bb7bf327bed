"""metrics.families: each instance's /version against the pinned release, and the metric
families the signals and dashboards use, against fake vLLMs."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from conftest import FAST, TEMPLATES, Result
from fakes import FakeVLLM

from postcheck import paths
from postcheck.dashboards import Dashboard, panel_queries
from postcheck.promtext import parse
from postcheck.signals import load_signals
from postcheck.vllm_metrics import (
    VersionPlan,
    family_name,
    load_families,
    pinned_version,
    present_families,
    project_uses,
    promql_metric_names,
    required_families,
    version_plan,
)

ROLE_DEFAULTS = paths.REPO / "roles" / "vllm" / "defaults" / "main.yml"
# The families templates/signals.yml needs (the dashboards need these and maybe more).
SIGNAL_FAMILIES = {
    "http_requests_total",
    "vllm:admission_rejections_total",
    "vllm:e2e_request_latency_seconds",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:request_queue_time_seconds",
    "vllm:request_success_total",
}


def the_project_uses() -> dict[str, set[str]]:
    import json

    signals = load_signals(TEMPLATES / "signals.yml")
    exprs = {}
    for path in sorted((TEMPLATES / "dashboards").glob("*.json")):
        queries, _ = panel_queries(Dashboard(path.name, json.loads(path.read_text())))
        exprs[path.name] = [q.expr for q in queries]
    return project_uses(
        (m.name for s in signals.signals for m in s.metrics if m.kind != "up"),
        "signals.yml",
        exprs,
    )


def test_pinned_version_is_the_roles_default() -> None:
    text = ROLE_DEFAULTS.read_text()
    [expected] = re.findall(r'^vllm_version: "([^"]+)"', text, re.MULTILINE)
    assert pinned_version(ROLE_DEFAULTS) == expected
    assert (TEMPLATES / "vllm-metrics" / f"{expected}.txt").is_file()


def test_a_local_build_label_is_the_same_release() -> None:
    from postcheck.worker_checks import same_release

    assert same_release("0.32.0+cpu", "0.32.0") and same_release("0.32.0", "0.32.0")
    assert not same_release("0.32.1", "0.32.0") and not same_release("0.32.0rc1", "0.32.0")


def test_promql_metric_names() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (model_name, le) (rate(vllm:x_bucket{job=~"$job", '
        'a="b{c}"}[$__rate_interval]))) / on(instance) group_left max(up) '
        "or vector(0) + bare_gauge offset 5m and $var"
    )
    assert promql_metric_names(expr) == {"vllm:x_bucket", "up", "bare_gauge"}


def test_required_families_of_the_project() -> None:
    pinned = load_families(TEMPLATES / "vllm-metrics", "0.32.0")
    uses = the_project_uses()
    required = required_families(uses, pinned)
    families = {r.family for r in required}
    assert families >= SIGNAL_FAMILIES
    assert "up" not in families  # Prometheus's own, never on an instance's /metrics
    assert not any(f.startswith(("node_", "gateway_", "DCGM_")) for f in families)  # not vLLM's
    assert all(r.listed for r in required)  # the dashboards use only 0.32 names
    for name in {n for names in uses.values() for n in names if n.startswith("vllm:")}:
        assert family_name(name, families), name  # every vllm: name the project uses
    queue = next(r for r in required if r.family == "vllm:request_queue_time_seconds")
    assert queue.used_by == ("signals.yml", "vllm-fleet.json")
    # a renamed vLLM metric is required too, and said to be unknown to the release
    [old] = required_families({"d.json": {"vllm:gpu_cache_usage_perc", "node_load1"}}, pinned)
    assert old.family == "vllm:gpu_cache_usage_perc" and not old.listed


def test_present_families_from_samples_or_type_lines() -> None:
    expo = parse(
        "# TYPE vllm:request_success_total counter\n"
        "# TYPE http_requests counter\n"
        'vllm:e2e_request_latency_seconds_count{engine="0"} 1\n'
    )
    present = present_families(
        expo,
        [
            "vllm:request_success_total",
            "http_requests_total",
            "vllm:e2e_request_latency_seconds",
            "x",
        ],
    )
    assert present == {
        "vllm:request_success_total",
        "http_requests_total",
        "vllm:e2e_request_latency_seconds",
    }


def test_version_plan_per_host_and_override(tmp_path: pytest.TempPathFactory) -> None:
    uses = the_project_uses()
    directory = TEMPLATES / "vllm-metrics"
    plan = version_plan(directory, "0.32.0", "roles", False, [None, "0.32.0"], uses)
    assert set(plan.required) == {"0.32.0"} and plan.pinned_for(None) == "0.32.0"
    forced = VersionPlan("0.32.0", "--expected-vllm-version", True, plan.required)
    assert forced.pinned_for("0.31.0") == "0.32.0"
    from postcheck.fleet import UsageError

    with pytest.raises(UsageError, match=r"no metric family list for vLLM 0\.31\.0.*0\.32\.0"):
        version_plan(directory, "0.32.0", "roles", False, ["0.31.0"], uses)


def test_other_release_missing_families_fails_against_fake_vllm(
    fake_vllm: Callable[..., FakeVLLM],
    run_postcheck: Callable[..., Result],
) -> None:
    old = fake_vllm(version="0.31.0", drop=["vllm:request_queue_time_seconds"])
    new = fake_vllm(version="0.33.0")
    same = fake_vllm()

    r = run_postcheck(
        *("--worker", f"{old.url},tiny", "--worker", f"{new.url},tiny"),
        *("--worker", f"{same.url},tiny"),
        *FAST,
    )

    pinned = load_families(TEMPLATES / "vllm-metrics", "0.32.0")
    n = len(required_families(the_project_uses(), pinned))
    families = {c["target"]: c for c in r.checks("metrics.families")}
    bad = families[old.instance]
    assert bad["status"] == "fail"
    assert bad["detail"].startswith(
        f"vLLM 0.31.0 differs from pinned 0.32.0: /metrics lacks 1 of the {n} families"
    )
    assert "vllm:request_queue_time_seconds (used by signals.yml, vllm-fleet.json)" in bad["detail"]
    ok = families[new.instance]
    assert ok["status"] == "pass"
    assert ok["detail"].startswith("vLLM 0.33.0 differs from pinned 0.32.0: none missing")
    assert families[same.instance]["status"] == "pass"
    assert families[same.instance]["detail"].startswith(f"vLLM 0.32.0 = pinned 0.32.0: all {n}")
    versions = r.report["summary"]["vllm_version"]
    assert versions["pinned"] == "0.32.0"
    assert versions["pinned_from"] == "roles/vllm/defaults/main.yml"
    assert versions["instances"][new.instance] == "0.33.0"


def test_expected_version_option_against_fake_vllm(
    fake_vllm: Callable[..., FakeVLLM],
    run_postcheck: Callable[..., Result],
    capsys: pytest.CaptureFixture[str],
) -> None:
    v = fake_vllm()

    r = run_postcheck("--worker", f"{v.url},tiny", "--expected-vllm-version", "0.99.1", *FAST)

    assert r.code == 2
    assert "no metric family list for vLLM 0.99.1" in capsys.readouterr().err
