"""templates/signals.yml (vLLM) and templates/gateway-signals.yml (the gateway): the signals
a dashboard draws and the post-check asserts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from postcheck.fleet import UsageError

Kind = Literal["counter_delta", "gauge_seen_above_zero", "present", "up", "all_one"]
DELTA_NAMES = ("requests", "invalid_requests")


@dataclass(frozen=True)
class MetricExpectation:
    name: str
    kind: Kind
    labels: Mapping[str, str] = field(default_factory=dict)
    delta: str | int | None = None  # "requests", "invalid_requests" or a number (counter_delta)
    absent_ok: bool = False

    @property
    def selector(self) -> str:
        """How reports show it: name{label="value",...}."""
        if not self.labels:
            return self.name
        inner = ",".join(f'{k}="{v}"' for k, v in sorted(self.labels.items()))
        return f"{self.name}{{{inner}}}"


@dataclass(frozen=True)
class Signal:
    id: str
    title: str
    panels: tuple[str, ...]
    metrics: tuple[MetricExpectation, ...]


@dataclass(frozen=True)
class SignalSet:
    dashboard: str
    signals: tuple[Signal, ...]


def _expectation(raw: Any, where: str) -> MetricExpectation:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
        raise UsageError(f"{where}: needs a name")
    labels = raw.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise UsageError(f"{where}: labels must be a mapping")
    expect = raw.get("expect")
    delta: str | int | None = None
    kind: Kind
    if isinstance(expect, Mapping) and set(expect) == {"counter_delta"}:
        kind, delta = "counter_delta", expect["counter_delta"]
        if not (delta in DELTA_NAMES or (isinstance(delta, int) and not isinstance(delta, bool))):
            raise UsageError(f"{where}: counter_delta must be one of {DELTA_NAMES} or a number")
    elif expect in ("gauge_seen_above_zero", "present", "up", "all_one"):
        kind = expect
    else:
        raise UsageError(f"{where}: unknown expect {expect!r}")
    return MetricExpectation(
        name=raw["name"],
        kind=kind,
        labels={str(k): str(v) for k, v in labels.items()},
        delta=delta,
        absent_ok=bool(raw.get("absent_ok", False)),
    )


def parse_signals(data: Any, source: str) -> SignalSet:
    if not isinstance(data, Mapping) or not isinstance(data.get("signals"), list):
        raise UsageError(f"{source}: needs a `signals` list")
    signals: list[Signal] = []
    for i, raw in enumerate(data["signals"]):
        where = f"{source}: signals[{i}]"
        if not isinstance(raw, Mapping) or not isinstance(raw.get("id"), str):
            raise UsageError(f"{where}: needs an id")
        metrics = raw.get("metrics")
        if not isinstance(metrics, list) or not metrics:
            raise UsageError(f"{where} ({raw['id']}): needs a metrics list")
        panels = raw.get("panels") or []
        signals.append(
            Signal(
                id=raw["id"],
                title=str(raw.get("title", raw["id"])),
                panels=tuple(str(p) for p in panels),
                metrics=tuple(
                    _expectation(m, f"{where}.metrics[{j}]") for j, m in enumerate(metrics)
                ),
            )
        )
    return SignalSet(dashboard=str(data.get("dashboard", "")), signals=tuple(signals))


def load_signals(path: Path) -> SignalSet:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read signals file {path}: {exc}") from None
    return parse_signals(data, str(path))
