"""A small parser for the Prometheus text exposition format (what vLLM's /metrics serves)."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


class ParseError(ValueError):
    pass


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


@dataclass
class Exposition:
    samples: list[Sample] = field(default_factory=list)
    types: dict[str, str] = field(default_factory=dict)  # family name -> counter|gauge|...
    helps: dict[str, str] = field(default_factory=dict)  # family name -> its # HELP text

    def matching(self, name: str, labels: Mapping[str, str] | None = None) -> list[Sample]:
        want = labels or {}
        return [
            s
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in want.items())
        ]

    def sum(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        """Sum over every label set (engines, reasons, handlers); None when no sample matches."""
        found = self.matching(name, labels)
        return math.fsum(s.value for s in found) if found else None

    def names(self) -> set[str]:
        return {s.name for s in self.samples}

    def label_values(self, prefix: str, label: str) -> set[str]:
        return {
            s.labels[label] for s in self.samples if s.name.startswith(prefix) and label in s.labels
        }


def _parse_value(text: str) -> float:
    lowered = text.lower()
    if lowered in ("+inf", "inf"):
        return math.inf
    if lowered == "-inf":
        return -math.inf
    if lowered == "nan":
        return math.nan
    return float(text)


def _parse_labels(line: str, pos: int, lineno: int) -> tuple[dict[str, str], int]:
    """Labels from just after "{" to just after "}"."""
    labels: dict[str, str] = {}
    n = len(line)
    while True:
        while pos < n and line[pos] in " \t,":
            pos += 1
        if pos < n and line[pos] == "}":
            return labels, pos + 1
        eq = line.find("=", pos)
        if eq < 0:
            raise ParseError(f"line {lineno}: label without '='")
        key = line[pos:eq].strip()
        pos = eq + 1
        while pos < n and line[pos] == " ":
            pos += 1
        if pos >= n or line[pos] != '"':
            raise ParseError(f"line {lineno}: label value of {key!r} not quoted")
        pos += 1
        chars: list[str] = []
        while True:
            if pos >= n:
                raise ParseError(f"line {lineno}: unterminated label value of {key!r}")
            c = line[pos]
            if c == "\\" and pos + 1 < n:
                nxt = line[pos + 1]
                chars.append({"n": "\n", "\\": "\\", '"': '"'}.get(nxt, "\\" + nxt))
                pos += 2
            elif c == '"':
                pos += 1
                break
            else:
                chars.append(c)
                pos += 1
        if not key:
            raise ParseError(f"line {lineno}: empty label name")
        labels[key] = "".join(chars)


def _sample(raw: str, lineno: int) -> Sample | None:
    """One line: a Sample, None for a blank or comment line; ParseError if malformed."""
    line = raw.strip()
    if not line or line.startswith("#"):
        return None
    brace = line.find("{")
    space = min((i for i in (line.find(" "), line.find("\t")) if i >= 0), default=-1)
    if brace >= 0 and (space < 0 or brace < space):
        name = line[:brace]
        labels, pos = _parse_labels(line, brace + 1, lineno)
        rest = line[pos:]
    else:
        if space < 0:
            raise ParseError(f"line {lineno}: sample without value: {raw[:80]!r}")
        name, labels, rest = line[:space], {}, line[space:]
    rest = rest.split("#", 1)[0]  # drop an OpenMetrics exemplar
    fields = rest.split()
    if not name or not fields:
        raise ParseError(f"line {lineno}: sample without value: {raw[:80]!r}")
    try:
        value = _parse_value(fields[0])
    except ValueError:
        raise ParseError(f"line {lineno}: bad value {fields[0]!r}") from None
    return Sample(name=name.strip(), labels=labels, value=value)


@functools.lru_cache(maxsize=64)
def _lines_of(names: frozenset[str]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"^[ \t]*(?:{alternatives})[ \t]*(?:\{{|[ \t]).*$", re.MULTILINE)


def parse(text: str, only: Iterable[str] | None = None) -> Exposition:
    """Parse text format 0.0.4 (and the OpenMetrics subset vLLM could serve).

    `only`: keep just the samples of these names; the other lines are not parsed at all (for
    callers that read a few series many times). Raises ParseError on a malformed sample line
    (among the kept ones), naming the line.
    """
    out = Exposition()
    if only is not None:
        for m in _lines_of(frozenset(only)).finditer(text):
            lineno = text.count("\n", 0, m.start()) + 1
            sample = _sample(m.group(0), lineno)
            if sample is not None:
                out.samples.append(sample)
        return out
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if raw.lstrip().startswith("#"):
            parts = raw.strip().split(None, 3)
            if len(parts) >= 4 and parts[1] == "TYPE":
                out.types[parts[2]] = parts[3].strip()
            elif len(parts) >= 3 and parts[1] == "HELP":
                out.helps[parts[2]] = parts[3] if len(parts) == 4 else ""
            continue
        sample = _sample(raw, lineno)
        if sample is not None:
            out.samples.append(sample)
    return out


def family_of(sample_name: str, families: Iterable[str]) -> str | None:
    """The family a sample name belongs to (x_bucket -> x for histograms), or None."""
    fams = set(families)
    if sample_name in fams:
        return sample_name
    for suffix in ("_bucket", "_sum", "_count", "_total", "_created"):
        if sample_name.endswith(suffix) and sample_name[: -len(suffix)] in fams:
            return sample_name[: -len(suffix)]
    return None
