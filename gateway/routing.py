"""Prefix-cache affinity: a request goes to the worker its prompt prefix hashes to, within a
load bound.

A pool in ``prefix_affinity`` mode keys each request (``request_key``): the value of the pool's
``session_header`` when the client sends it, else ``prefix_chars`` characters of the prompt
after the first ``prefix_skip_chars`` (a shared system prompt would otherwise send every
request to one worker). The key's hash picks a point on a consistent-hash ring of the pool's
workers (VNODES virtual nodes each); walking the ring from there, the first worker that is free
(ready, a slot left) and whose ``in_flight + 1`` stays within ``ceil(load_factor x mean)``
takes it, the mean being the in-flight requests of the pool's ready workers, this one counted,
over their number. That is KubeAI's CHWBL (substratusai/kubeai,
internal/loadbalancer/balance_chwbl.go: ``load+1 <= (total+1)/n x loadFactor``), with a ceil so
that an idle pool still places (1 <= ceil(1.25 x 1/4)). When no worker on the ring qualifies
the caller falls back to least outstanding, as it does for a request without a key.

The ring is built from every configured worker, ready or not, with blake2b (no per-process
seed): two gateway processes, or one after a restart, send a key to the same worker, and a
worker taken out moves only its own keys, which come back when it returns.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any, Protocol

MODES = ("least_outstanding", "prefix_affinity")
VNODES = 128  # virtual nodes per worker (the test: 1,000 keys over 4 workers, 21-32 % each)
DEFAULT_LOAD_FACTOR = 1.25
# Shorter than the distinct part of a conversation's first turn, so that the key stays the same
# as the conversation grows (a key longer than the whole prompt changes with every turn).
# KubeAI's default is 100 (substratusai/kubeai, model_types.go: PrefixHash.PrefixCharLength).
DEFAULT_PREFIX_CHARS = 256
# RFC 9110 section 5.1: a field name is a token.
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"


@dataclass(frozen=True)
class RoutingConfig:
    mode: str = "least_outstanding"
    load_factor: float = DEFAULT_LOAD_FACTOR
    prefix_chars: int = DEFAULT_PREFIX_CHARS
    prefix_skip_chars: int = 0
    session_header: str | None = None


KEYS = ("mode", "load_factor", "prefix_chars", "prefix_skip_chars", "session_header")


def check_routing(data: Mapping[str, Any], name: Callable[[str], str],
                  error: Callable[[str, str], None]) -> RoutingConfig:
    """A routing mapping's values, each bad one reported as error(name(option), message).

    Shared by the gateway's config (``pools[0].routing.mode``) and the role's filter
    (``gateway_routing_mode``), so both refuse the same values with the same words.
    """
    for key in data:
        if key not in KEYS:
            error(name(key), f"unknown option (known: {', '.join(KEYS)})")
    default = RoutingConfig()
    mode = data.get("mode", default.mode)
    if mode not in MODES:
        error(name("mode"), f"must be one of {', '.join(MODES)}, got {mode!r}")
        mode = default.mode
    factor = data.get("load_factor", default.load_factor)
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not (
            1 < factor < math.inf):
        error(name("load_factor"), f"must be a finite number above 1 (a worker may take this "
              f"many times the pool's mean in-flight requests), got {factor!r}")
        factor = default.load_factor
    chars = _count(data, "prefix_chars", default.prefix_chars, 1, name, error)
    skip = _count(data, "prefix_skip_chars", default.prefix_skip_chars, 0, name, error)
    header = data.get("session_header")
    if header is not None and (not isinstance(header, str) or not HEADER_NAME.match(header)):
        error(name("session_header"), f"must be an HTTP header name (letters, digits and "
              f"!#$%&'*+.^_`|~-) or null, got {header!r}")
        header = None
    return RoutingConfig(mode, float(factor), chars, skip, header)


def _count(data: Mapping[str, Any], key: str, default: int, minimum: int,
           name: Callable[[str], str], error: Callable[[str, str], None]) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        error(name(key), f"must be an integer >= {minimum} (characters), got {value!r}")
        return default
    return value


# ---------------------------------------------------------------------------- the key
def prompt_text(path: str, body: Mapping[str, Any], limit: int) -> str:
    """At least the first ``limit`` characters of the prompt (all of it when shorter); "" when
    the body has no prompt this router understands.

    /v1/completions: ``prompt`` as a string, the first string of a list, or a token-id list's
    repr; /v1/chat/completions: each message's role and content (content parts' text joined),
    in order.
    """
    if path == COMPLETIONS_PATH:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
            prompt = prompt[0]  # a batch: its first prompt
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, list):
            # Token ids: each takes at least 3 characters of the repr ("1, "), so the first
            # ``limit`` ids give the first ``limit`` characters of the whole list's repr.
            return repr(prompt[:limit])
        return ""
    if path == CHAT_PATH:
        messages = body.get("messages")
        if not isinstance(messages, list):
            return ""
        parts: list[str] = []
        size = 0
        for message in messages:
            if not isinstance(message, Mapping):
                continue
            text = f"{message.get('role')}\x1f{_content(message.get('content'))}\x1e"
            parts.append(text)
            size += len(text)
            if size >= limit:
                break
        return "".join(parts)
    return ""


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: their text, in order
        return "".join(p["text"] for p in content
                       if isinstance(p, Mapping) and isinstance(p.get("text"), str))
    return ""


def request_key(config: RoutingConfig, headers: Mapping[str, str], path: str,
                body: Mapping[str, Any]) -> str | None:
    """The request's affinity key, or None (least outstanding): the session header's value
    when the pool names one and the request carries it, else the prompt's characters
    [prefix_skip_chars, prefix_skip_chars + prefix_chars); None when nothing is left past
    the skip (the whole prompt is the shared part)."""
    if config.session_header is not None:
        session = headers.get(config.session_header)
        if session:
            return "\x00session\x00" + session
    start = config.prefix_skip_chars
    end = start + config.prefix_chars
    key = prompt_text(path, body, end)[start:end]
    return key or None


def key_hash(key: str) -> int:
    return int.from_bytes(blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "big")


# ---------------------------------------------------------------------------- the ring
class Slot(Protocol):
    """What the ring needs of a worker (gateway.pool.Worker)."""

    @property
    def ready(self) -> bool: ...

    @property
    def free(self) -> bool: ...

    in_flight: int


class Ring:
    """A consistent-hash ring over a fixed list of workers, ``vnodes`` points each."""

    def __init__(self, names: Sequence[str], vnodes: int = VNODES) -> None:
        points = sorted((key_hash(f"{name}\x00{i}"), index)
                        for index, name in enumerate(names) for i in range(vnodes))
        self._hashes = [h for h, _ in points]
        self._owners = [index for _, index in points]
        self._size = len(names)

    def walk(self, hashed: int) -> Iterator[int]:
        """Every worker's index once, in the order the ring meets them from ``hashed``
        clockwise (lazily: a pick stops at the first that qualifies)."""
        n = len(self._hashes)
        start = bisect_left(self._hashes, hashed)
        seen: set[int] = set()
        owners = self._owners
        for j in range(n):
            owner = owners[(start + j) % n]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == self._size:
                    return

    def first(self, hashed: int) -> int:
        """The index of the worker the key hashes to (its home)."""
        start = bisect_left(self._hashes, hashed)
        return self._owners[start % len(self._hashes)]


class Affinity:
    """The pick of a prefix_affinity pool: the key's worker on the ring, within the bound."""

    def __init__(self, config: RoutingConfig, names: Sequence[str]) -> None:
        self.config = config
        self.ring = Ring(names)

    def bound(self, workers: Sequence[Slot]) -> int:
        """The most requests one worker may hold after this placement: ceil(load_factor x
        the mean in flight over the ready workers, the request being placed counted)."""
        total = 1
        ready = 0
        for w in workers:
            if w.ready:
                ready += 1
                total += w.in_flight
        # A hair below the product, so that 1.2 x 5 / 2 = 3.0000000000000004 gives 3.
        return math.ceil(self.config.load_factor * total / max(ready, 1) - 1e-9)

    def pick(self, key: str, workers: Sequence[Slot]) -> int | None:
        """The index of the worker for ``key``, or None: no free worker within the bound."""
        hashed = key_hash(key)
        limit = self.bound(workers)
        home = self.ring.first(hashed)
        w = workers[home]
        if w.free and w.in_flight < limit:  # the common case, without walking the ring
            return home
        for index in self.ring.walk(hashed):
            w = workers[index]
            if w.free and w.in_flight < limit:
                return index
        return None
