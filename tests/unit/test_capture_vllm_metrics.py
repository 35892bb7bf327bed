"""lab/capture_vllm_metrics.py (make capture-vllm-metrics) against the fake vLLM, no lab.

The fake serves the families of the committed 0.32.0 list, so a capture from it must list
the same families with the same types; and the bucket lines must come out the way the
upgrade guard reads them.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from conftest import REPO, TEMPLATES
from fakes import FakeVLLM

from postcheck.vllm_metrics import load_families


def capture_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "capture", REPO / "lab" / "capture_vllm_metrics.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["capture"] = module
    spec.loader.exec_module(module)
    return module


def test_parse_names_counters_with_total_and_reads_buckets() -> None:
    capture = capture_module()
    fams = capture.parse(
        "# HELP vllm:request_success_total Count.\n"
        "# TYPE vllm:request_success_total counter\n"
        'vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 3\n'
        "# HELP vllm:e2e_request_latency_seconds Latency.\n"
        "# TYPE vllm:e2e_request_latency_seconds histogram\n"
        'vllm:e2e_request_latency_seconds_bucket{engine="0",le="0.3",model_name="m"} 1\n'
        'vllm:e2e_request_latency_seconds_bucket{engine="0",le="5.0",model_name="m"} 2\n'
        'vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="m"} 2\n'
        'vllm:e2e_request_latency_seconds_count{engine="0",model_name="m"} 2\n'
        "# TYPE vllm:e2e_request_latency_seconds_created gauge\n"
        'vllm:e2e_request_latency_seconds_created{engine="0",model_name="m"} 1.7e9\n'
    )
    assert set(fams) == {"vllm:request_success_total", "vllm:e2e_request_latency_seconds"}
    assert fams["vllm:request_success_total"].labels == {"engine", "finished_reason", "model_name"}
    hist = fams["vllm:e2e_request_latency_seconds"]
    assert hist.buckets == ["0.3", "5.0"] and hist.samples == 4
    text = capture.render("9.9.9", {}, fams, 2)
    assert "# buckets vllm:e2e_request_latency_seconds: 0.3, 5.0\n" in text
    assert (
        "vllm:e2e_request_latency_seconds | histogram | engine,model_name | 0->4 | Latency." in text
    )


def test_capture_from_a_served_vllm_lists_its_families(
    fake_vllm: Callable[..., FakeVLLM], tmp_path: Path
) -> None:
    capture = capture_module()
    vllm = fake_vllm()
    path = capture.capture(vllm.url, tmp_path)
    assert path.name == "0.32.0.txt"
    captured = load_families(tmp_path, "0.32.0")
    committed = load_families(TEMPLATES / "vllm-metrics", "0.32.0")
    assert set(captured) == set(committed)
    assert {n: f.type for n, f in captured.items()} == {n: f.type for n, f in committed.items()}
