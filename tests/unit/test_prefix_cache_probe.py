"""The post-check's prefix-cache probe (postcheck/prefix_cache.py) against the fake vLLM,
whose prefix cache counts as vLLM's KV cache manager does (postcheck/testing/prefix_cache.py):
two identical prompts of N token ids move the queries by 2N and the hits by
floor((N-1)/B)*B. No real vLLM here: the lab runs the probe against the real one."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import FAST, Result
from fakes import FakeVLLM

from postcheck.fleet import Worker
from postcheck.prefix_cache import Expectation, check_prefix_cache, probe_length
from postcheck.report import CheckFailed, CheckSkipped

RunPostcheck = Callable[..., Result]


def worker(v: FakeVLLM) -> Worker:
    return Worker(label="w1/main", base_url=v.url, model="tiny")


@pytest.mark.parametrize(
    ("block_size", "tokens", "hits"),
    [(1, 3, 2), (2, 5, 4), (16, 40, 32), (32, 80, 64)],
)
def test_expected_counts_follow_vllms_rule(block_size: int, tokens: int, hits: int) -> None:
    want = Expectation(block_size, probe_length(block_size))
    assert (want.tokens, want.queries, want.hits) == (tokens, 2 * tokens, hits)
    # the last token is always recomputed: N = 2B + 1 hits 2B, N = 2B hits only B
    assert Expectation(block_size, 2 * block_size + 1).hits == 2 * block_size
    assert Expectation(block_size, 2 * block_size).hits == block_size


@pytest.mark.parametrize("block_size", [16, 32])
def test_probe_passes_with_the_exact_counts(
    fake_vllm: Callable[..., FakeVLLM], block_size: int
) -> None:
    v = fake_vllm()
    v.prefix_cache.block_size = block_size
    v.serve_other()  # earlier traffic: counters need not start at 0
    n = probe_length(block_size)

    detail = check_prefix_cache(worker(v), "tiny", timeout=3)

    hits = (n - 1) // block_size * block_size
    assert f"w1/main: 2 x {n} token ids, block_size {block_size}" in detail
    assert f"got Δqueries {2 * n} and Δhits {hits}" in detail
    assert v.prefix_cache.queries == 2 * n and v.prefix_cache.hits == hits
    assert [len(b["prompt"]) for b in v.completion_bodies] == [n, n]
    assert all(b["max_tokens"] == 1 for b in v.completion_bodies)


def test_probe_fails_naming_instance_expected_and_actual_when_hits_are_wrong(
    fake_vllm: Callable[..., FakeVLLM],
) -> None:
    v = fake_vllm()
    v.prefix_cache.hit_error = 1  # one token too many per hit

    with pytest.raises(CheckFailed) as failed:
        check_prefix_cache(worker(v), "tiny", timeout=3)

    assert str(failed.value).startswith(
        "w1/main: 2 x 40 token ids, block_size 16: expected Δqueries 80 and Δhits 32 "
        "(floor((N-1)/B)*B), got Δqueries 80 and Δhits 33"
    )


def test_probe_fails_when_the_second_request_finds_no_cache(
    fake_vllm: Callable[..., FakeVLLM],
) -> None:
    v = fake_vllm()
    v.prefix_cache.finish = lambda tokens: None  # type: ignore[method-assign]  # caches nothing

    with pytest.raises(CheckFailed) as failed:
        check_prefix_cache(worker(v), "tiny", timeout=3)

    assert "expected Δqueries 80 and Δhits 32" in str(failed.value)
    assert "got Δqueries 80 and Δhits 0" in str(failed.value)


def test_prefix_caching_off_is_said_not_passed(fake_vllm: Callable[..., FakeVLLM]) -> None:
    v = fake_vllm()
    v.prefix_cache.enabled = False

    with pytest.raises(CheckSkipped) as skipped:
        check_prefix_cache(worker(v), "tiny", timeout=3)

    assert str(skipped.value).startswith(
        "prefix caching is off on w1/main (vllm:cache_config_info enable_prefix_caching=False)"
    )
    assert v.completion_bodies == []  # nothing sent


def test_no_cache_config_is_a_failure(fake_vllm: Callable[..., FakeVLLM]) -> None:
    v = fake_vllm(drop=["vllm:cache_config_info"])

    with pytest.raises(CheckFailed, match="/metrics has no vllm:cache_config_info: cannot tell"):
        check_prefix_cache(worker(v), "tiny", timeout=3)


def test_the_cli_reports_the_probe_before_the_load(
    fake_vllm: Callable[..., FakeVLLM], run_postcheck: RunPostcheck
) -> None:
    good, bad, off = fake_vllm(), fake_vllm(), fake_vllm()
    bad.prefix_cache.hit_error = 16
    off.prefix_cache.enabled = False

    r = run_postcheck(*(a for v in (good, bad, off) for a in ("--worker", f"{v.url},tiny")), *FAST)

    assert r.code == 1
    by_target = {c["target"]: c for c in r.checks("prefix_cache")}
    assert by_target[good.instance]["status"] == "pass"
    assert by_target[bad.instance]["status"] == "fail"
    assert "expected Δqueries 80 and Δhits 32" in by_target[bad.instance]["detail"]
    assert "got Δqueries 80 and Δhits 48" in by_target[bad.instance]["detail"]
    assert by_target[off.instance]["status"] == "skip"
    assert "prefix caching is off" in by_target[off.instance]["detail"]
    names = [c["name"] for c in r.report["checks"]]
    assert names.index("prefix_cache") < names.index("load")
    # the probe's own two completions reached each instance before the load's
    assert all(len(v.completion_bodies[1]["prompt"]) == 40 for v in (good, bad))
