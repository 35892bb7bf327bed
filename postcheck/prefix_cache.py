"""The prefix-cache probe: two identical requests to one instance move vLLM's prefix-cache
counters by an amount known in advance.

The same prompt of N token ids, sent twice, one after the other, straight to the instance:
Δvllm:prefix_cache_queries_total = 2N (each request looks up its whole prompt) and
Δvllm:prefix_cache_hits_total = floor((N - 1) / B) x B, B the block size
vllm:cache_config_info reports: the first request finds nothing (its token ids are random,
so no earlier request shares a block), the second finds the first one's full blocks, but
never its last token, which vLLM recomputes to get the logits, and only whole blocks count
(vllm-project/vllm, vllm/v1/core/kv_cache_manager.py, KVCacheManager.get_computed_blocks:
max_cache_hit_length = request.num_tokens - 1; read at commit
003df2961dd8830c317a61f9745ccd557da9fa06). Run before the load, so nothing else moves them.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import requests

from postcheck.fleet import Worker
from postcheck.httpclient import session, status_detail
from postcheck.promtext import Exposition
from postcheck.report import CheckFailed, CheckSkipped
from postcheck.worker_checks import fetch_metrics

HITS = "vllm:prefix_cache_hits_total"
QUERIES = "vllm:prefix_cache_queries_total"
CONFIG = "vllm:cache_config_info"
# Token ids the probe draws from: below any real vocabulary's size, above special tokens.
TOKEN_IDS = range(10, 250)
POLL_S = 0.1


@dataclass(frozen=True)
class Expectation:
    block_size: int
    tokens: int  # N

    @property
    def queries(self) -> int:
        return 2 * self.tokens

    @property
    def hits(self) -> int:
        return (self.tokens - 1) // self.block_size * self.block_size


def probe_length(block_size: int) -> int:
    """N: two and a half blocks, so the second request hits two whole blocks and the floor
    of the rule matters (N - 1 is no multiple of B)."""
    return 2 * block_size + max(1, block_size // 2)


def cache_config(expo: Exposition, label: str) -> int:
    """The block size, or CheckSkipped/CheckFailed saying why the probe cannot run."""
    infos = expo.matching(CONFIG)
    if not infos:
        raise CheckFailed(f"/metrics has no {CONFIG}: cannot tell whether prefix caching is on")
    off = [s for s in infos if s.labels.get("enable_prefix_caching", "").lower() != "true"]
    if off:
        value = off[0].labels.get("enable_prefix_caching", "(missing)")
        raise CheckSkipped(
            f"prefix caching is off on {label} ({CONFIG} enable_prefix_caching={value}): "
            "its prefix-cache hit ratio cannot move, so it is not checked"
        )
    if len(infos) > 1:
        raise CheckSkipped(
            f"{len(infos)} engines on {label} (data parallel): the two probe requests may land "
            "on different engines, so no exact hit count can be expected"
        )
    size = infos[0].labels.get("block_size", "")
    if not size.isdigit() or int(size) < 1:
        raise CheckFailed(f"{CONFIG} on {label} reports block_size={size!r}, not a block size")
    return int(size)


def counters(s: requests.Session, worker: Worker, model: str, timeout: float) -> tuple[int, int]:
    """(hits, queries) of the instance's model, summed over engines."""
    expo = fetch_metrics(s, worker, timeout, only=[HITS, QUERIES])
    hits, queries = expo.sum(HITS, {"model_name": model}), expo.sum(QUERIES, {"model_name": model})
    if hits is None or queries is None:
        raise CheckFailed(f"/metrics has no {HITS} or {QUERIES} for model_name {model!r}")
    return int(hits), int(queries)


def send(s: requests.Session, worker: Worker, model: str, ids: list[int], timeout: float) -> None:
    body = {"model": model, "prompt": ids, "max_tokens": 1}
    resp = s.post(f"{worker.base_url}/v1/completions", json=body, timeout=timeout)
    if resp.status_code != 200:
        raise CheckFailed(f"probe completion of {len(ids)} token ids: {status_detail(resp)}")


def verdict(label: str, want: Expectation, hits: int, queries: int) -> str:
    """The pass detail, or CheckFailed naming the instance, the expected and actual deltas."""
    says = (
        f"{label}: 2 x {want.tokens} token ids, block_size {want.block_size}: expected "
        f"Δqueries {want.queries} and Δhits {want.hits} (floor((N-1)/B)*B), got Δqueries "
        f"{queries} and Δhits {hits}"
    )
    if (hits, queries) != (want.hits, want.queries):
        raise CheckFailed(says + " (other traffic on the instance during the probe moves them too)")
    return says


def check_prefix_cache(worker: Worker, model: str, timeout: float) -> str:
    """Run the probe on one instance; the pass detail, or CheckFailed/CheckSkipped."""
    s = session(worker.api_key)
    block_size = cache_config(fetch_metrics(s, worker, timeout, only=[CONFIG]), worker.label)
    want = Expectation(block_size, probe_length(block_size))
    ids = [random.SystemRandom().choice(TOKEN_IDS) for _ in range(want.tokens)]
    hits0, queries0 = counters(s, worker, model, timeout)
    send(s, worker, model, ids, timeout)
    send(s, worker, model, ids, timeout)
    # vLLM publishes an engine step's stats after its outputs: wait until both lookups count.
    deadline = time.monotonic() + timeout
    while True:
        hits, queries = counters(s, worker, model, timeout)
        if queries - queries0 >= want.queries or time.monotonic() >= deadline:
            return verdict(worker.label, want, hits - hits0, queries - queries0)
        time.sleep(POLL_S)
