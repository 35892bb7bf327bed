"""Which metric families a vLLM release serves, and which of them the project relies on.

templates/vllm-metrics/<version>.txt lists the families one vLLM release serves on /metrics
(captured from a real scrape), one per line: `name | type | labels | samples | help`; lines
starting with # are comments. The pinned release is roles/vllm/defaults/main.yml's
`vllm_version` (one source of truth; an inventory may override it per host like the role).

The families that MATTER are those templates/signals.yml and the dashboards query: the
`metrics.families` check requires every one of them in each instance's /metrics.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from postcheck.fleet import UsageError
from postcheck.promtext import Exposition

SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created", "_info")
# Series Prometheus makes itself: never on an instance's /metrics.
SYNTHETIC = re.compile(r"^(up|scrape_\w+|ALERTS\w*)$")


@dataclass(frozen=True)
class Family:
    name: str  # as listed: counters with their _total
    type: str  # counter | gauge | histogram | summary | ...
    labels: tuple[str, ...]
    samples: int  # samples it had in the captured scrape (after requests)


def parse_families(text: str, source: str) -> dict[str, Family]:
    out: dict[str, Family] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise UsageError(f"{source}:{lineno}: expected `name | type | labels | ...`")
        labels = tuple(x for x in (parts[2] if len(parts) > 2 else "").split(",") if x.strip())
        samples = 1
        if len(parts) > 3 and (m := re.search(r"(\d+)\s*$", parts[3])):
            samples = int(m.group(1))
        out[parts[0]] = Family(parts[0], parts[1], tuple(x.strip() for x in labels), samples)
    if not out:
        raise UsageError(f"{source}: lists no metric family")
    return out


def known_versions(directory: Path) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.txt"))


def load_families(directory: Path, version: str) -> dict[str, Family]:
    path = directory / f"{version}.txt"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        have = ", ".join(known_versions(directory)) or "none"
        raise UsageError(
            f"no metric family list for vLLM {version}: cannot read {path} ({exc.strerror}); "
            f"lists exist for: {have}. Capture one from a scrape of that release "
            "(or give --expected-vllm-version)"
        ) from None
    return parse_families(text, str(path))


def pinned_version(role_defaults: Path) -> str:
    """vllm_version from roles/vllm/defaults/main.yml."""
    try:
        data = yaml.safe_load(role_defaults.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(
            f"cannot read vllm_version from {role_defaults}: {exc} (give --expected-vllm-version)"
        ) from None
    version = data.get("vllm_version") if isinstance(data, Mapping) else None
    if not isinstance(version, str | int | float) or not str(version).strip():
        raise UsageError(f"{role_defaults} sets no vllm_version (give --expected-vllm-version)")
    return str(version).strip()


# --- metric names in PromQL -------------------------------------------------------------
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(?![\w:])(\s*\()?")
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
    }
)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (bare or before {...}), not functions."""
    text = _STRINGS.sub('""', expr)
    text = _BRACES.sub("{}", text)
    text = _RANGES.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for m in _IDENT.finditer(text):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def family_name(sample: str, families: Iterable[str]) -> str | None:
    """The listed family a sample or TYPE name belongs to (x_bucket -> x, x -> x_total)."""
    fams = families if isinstance(families, set | frozenset | dict) else set(families)
    if sample in fams:
        return sample
    if f"{sample}_total" in fams:  # OpenMetrics TYPE lines name counters without _total
        return f"{sample}_total"
    for suffix in SUFFIXES:
        if sample.endswith(suffix) and sample[: -len(suffix)] in fams:
            return sample[: -len(suffix)]
    return None


@dataclass(frozen=True)
class Required:
    """A family the project's signals or dashboards query."""

    family: str
    used_by: tuple[str, ...]  # "signals.yml", "vllm-fleet.json", ...
    listed: bool  # in the pinned release's family list


def required_families(
    uses: Mapping[str, Iterable[str]],
    pinned: Mapping[str, Family],
    other_releases: Iterable[Mapping[str, Family]] = (),
) -> list[Required]:
    """Families that `uses` (source -> metric names) need from vLLM, sorted.

    A name counts as vLLM's when it is in the pinned list, in another release's list, or
    starts with vllm:. Others (Prometheus's own `up`, a gateway's or node_exporter's metrics)
    are not on an instance's /metrics and are left out.
    """
    others: set[str] = set()
    for fams in other_releases:
        others |= set(fams)
    found: dict[str, tuple[set[str], bool]] = {}
    for source, names in uses.items():
        for name in names:
            if SYNTHETIC.match(name):
                continue
            fam = family_name(name, set(pinned))
            listed = fam is not None
            if fam is None:
                fam = family_name(name, others)
            if fam is None and name.startswith("vllm:"):
                fam = re.sub(r"_(bucket|count|sum)$", "", name)
            if fam is None:
                continue
            sources, _ = found.setdefault(fam, (set(), listed))
            sources.add(source)
    return [Required(f, tuple(sorted(s)), listed) for f, (s, listed) in sorted(found.items())]


def present_families(expo: Exposition, candidates: Iterable[str]) -> set[str]:
    """Which candidate families /metrics has: a sample of it, or at least its # TYPE line."""
    fams = set(candidates)
    present = set()
    for name in expo.names() | set(expo.types):
        fam = family_name(name, fams)
        if fam is not None:
            present.add(fam)
    return present


@dataclass(frozen=True)
class VersionPlan:
    """Which release each instance should run, and what it must serve for the project."""

    default: str  # the pinned release: roles/vllm/defaults/main.yml or --expected-vllm-version
    source: str  # where `default` came from, for the report
    override: bool  # --expected-vllm-version given: the hosts' vllm_version hostvars are ignored
    required: Mapping[str, tuple[Required, ...]]  # pinned release -> required families

    def pinned_for(self, host_version: str | None) -> str:
        return self.default if self.override or not host_version else host_version


def project_uses(
    signal_names: Iterable[str], signals_file: str, dashboard_exprs: Mapping[str, Iterable[str]]
) -> dict[str, set[str]]:
    """source -> metric names it queries: the signals file and every dashboard file."""
    uses: dict[str, set[str]] = {signals_file: set(signal_names)}
    for file, exprs in dashboard_exprs.items():
        names: set[str] = set()
        for expr in exprs:
            names |= promql_metric_names(expr)
        uses[file] = names
    return uses


def version_plan(
    directory: Path,
    default: str,
    source: str,
    override: bool,
    host_versions: Iterable[str | None],
    uses: Mapping[str, Iterable[str]],
) -> VersionPlan:
    """The plan for these hosts; UsageError when a pinned release has no family list."""
    pinned = {default if override or not v else v for v in host_versions} or {default}
    every = {v: load_families(directory, v) for v in known_versions(directory)}
    required: dict[str, tuple[Required, ...]] = {}
    for version in sorted(pinned):
        families = every.get(version) or load_families(directory, version)
        others = [f for v, f in every.items() if v != version]
        required[version] = tuple(required_families(uses, families, others))
    return VersionPlan(default, source, override, required)
