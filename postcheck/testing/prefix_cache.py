"""A fake vLLM's prefix cache: the hit and query counts vLLM's KV cache manager reports.

As vLLM (v1/core/kv_cache_manager.py, KVCacheManager.get_computed_blocks): a request's hit
is its longest prefix of FULL blocks already cached, capped at its length - 1 (the last
token is always recomputed for its logits), so a hit is a multiple of the block size;
every scheduled request queries its whole prompt. Finished requests leave their full
prompt blocks cached (nothing is evicted here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

Series = tuple[str, dict[str, str], float]
FAMILIES = frozenset(
    {"vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total", "vllm:cache_config_info"}
)


def prompt_tokens(prompt: object) -> list[int]:
    """Token ids of a completion's prompt: a list of ids as sent, a text one id per character."""
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return list(prompt)
    return [ord(c) for c in str(prompt or "")]


@dataclass
class FakePrefixCache:
    block_size: int = 16
    enabled: bool = True
    # Tokens added to every hit (a broken counter, for the post-check's failure cases).
    hit_error: int = 0
    hits: int = 0
    queries: int = 0
    _blocks: set[tuple[int, ...]] = field(default_factory=set)

    def schedule(self, tokens: Sequence[int]) -> None:
        """A request enters the running batch: its lookup is counted."""
        if not self.enabled:
            return
        b = self.block_size
        cached = 0  # whole cached blocks, never the last token's
        while (cached + 1) * b < len(tokens) and tuple(tokens[: (cached + 1) * b]) in self._blocks:
            cached += 1
        self.queries += len(tokens)
        self.hits += cached * b + (self.hit_error if cached else 0)

    def finish(self, tokens: Sequence[int]) -> None:
        """A request finished: its full prompt blocks stay cached."""
        if not self.enabled:
            return
        b = self.block_size
        for n in range(b, len(tokens) + 1, b):
            self._blocks.add(tuple(tokens[:n]))

    def series(self, model: str, config_labels: Sequence[str]) -> list[Series]:
        base = {"engine": "0", "model_name": model}
        info = dict.fromkeys((k for k in config_labels if k != "engine"), "0")
        info.update(
            engine="0",
            block_size=str(self.block_size),
            enable_prefix_caching=str(self.enabled),
        )
        return [
            ("vllm:prefix_cache_hits_total", dict(base), float(self.hits)),
            ("vllm:prefix_cache_queries_total", dict(base), float(self.queries)),
            ("vllm:cache_config_info", info, 1.0),
        ]
