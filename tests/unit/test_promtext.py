"""The Prometheus text-format parser."""

from __future__ import annotations

import math

import pytest
from fakes import FakeVLLM

from postcheck.promtext import ParseError, family_of, parse

VLLM_LIKE = r"""
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{engine="0",finished_reason="stop",model_name="tiny"} 3.0
vllm:request_success_total{engine="0",finished_reason="length",model_name="tiny"} 7.0
vllm:request_success_total{engine="1",finished_reason="length",model_name="tiny"} 2.0
vllm:request_success_total{engine="0",finished_reason="error",model_name="tiny"} 0.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="tiny"} 4.0
vllm:num_requests_waiting{engine="1",model_name="tiny"} 1.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="tiny"} 12.0
http_requests_total{handler="/v1/completions",method="POST",status="4xx"} 2.0
process_open_fds 17.0
odd{path="C:\\dir",quote="say \"hi\"",nl="a\nb"} NaN
neg{x="y"} -Inf 1712345678000
om_exemplar_total{a="b"} 5 # {trace_id="abc"} 1.0
"""


def test_parse_sums_over_label_sets() -> None:
    expo = parse(VLLM_LIKE)
    assert expo.types["vllm:request_success_total"] == "counter"
    assert expo.sum("vllm:request_success_total") == 12.0
    assert expo.sum("vllm:request_success_total", {"finished_reason": "length"}) == 9.0
    assert expo.sum("vllm:request_success_total", {"finished_reason": "error"}) == 0.0
    assert expo.sum("vllm:num_requests_waiting") == 5.0  # summed over engines
    assert expo.sum("http_requests_total", {"status": "4xx"}) == 2.0
    assert expo.sum("http_requests_total", {"status": "5xx"}) is None  # absent, not 0
    assert expo.sum("process_open_fds") == 17.0
    assert expo.label_values("vllm:", "model_name") == {"tiny"}
    assert expo.label_values("vllm:", "engine") == {"0", "1"}


def test_parse_escapes_special_values_timestamps_exemplars() -> None:
    expo = parse(VLLM_LIKE)
    [odd] = expo.matching("odd")
    assert odd.labels == {"path": "C:\\dir", "quote": 'say "hi"', "nl": "a\nb"}
    assert math.isnan(odd.value)
    assert expo.sum("neg") == -math.inf
    assert expo.sum("om_exemplar_total") == 5.0
    assert expo.matching("vllm:e2e_request_latency_seconds_bucket")[0].labels["le"] == "+Inf"


def test_parse_what_the_fake_vllm_serves() -> None:
    expo = parse(FakeVLLM(model="m").exposition())
    assert expo.sum("vllm:request_success_total") == 0.0
    assert expo.label_values("vllm:", "model_name") == {"m"}


@pytest.mark.parametrize(
    "text",
    [
        "metric_without_value\n",
        'bad{label="unterminated} 1\n',
        "bad{label=unquoted} 1\n",
        'bad{="x"} 1\n',
        "name notanumber\n",
        "<html><body>Not metrics</body></html>\n",
    ],
)
def test_parse_rejects_malformed_lines(text: str) -> None:
    with pytest.raises(ParseError, match="line 1"):
        parse(text)


def test_parse_ignores_blank_and_comment_lines() -> None:
    assert parse("\n# just a comment\n# EOF\n").samples == []


def test_family_of() -> None:
    fams = ["vllm:e2e_request_latency_seconds", "vllm:request_success_total", "up"]
    assert (
        family_of("vllm:e2e_request_latency_seconds_bucket", fams)
        == "vllm:e2e_request_latency_seconds"
    )
    assert (
        family_of("vllm:e2e_request_latency_seconds_count", fams)
        == "vllm:e2e_request_latency_seconds"
    )
    assert family_of("vllm:request_success_total", fams) == "vllm:request_success_total"
    assert family_of("vllm:request_failure_total", fams) is None
