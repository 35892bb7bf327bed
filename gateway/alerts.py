"""Alertmanager's webhook on the admin port: GPU-fault alerts drain a host's workers.

``POST /admin/alerts`` takes Alertmanager's webhook payload (version "4"). An alert whose
labels carry ``action="drain_host"`` and a ``host`` drains, while it fires, every worker of
this gateway named ``<host>/...`` (worker names are ``<inventory_hostname>/<instance>``); when
it resolves, the workers it drained take requests again once no other firing drain alert holds
them. Alerts without the label are ignored (and counted). The same firing alert sent again
(Alertmanager repeats every repeat_interval) changes nothing.

Only what the alerts drained is undrained: a worker an operator drained by hand (before the
alert, or through the admin API while it fires) stays drained, and one an operator undrained
while an alert held it stays undrained (a drain alert that fires later drains it again). An alert is
known by its label set (what Alertmanager's fingerprint hashes), so the fingerprint need not be
sent. The state is in memory: a restarted gateway starts with no alert drains, and gets them
back when Alertmanager sends the still-firing alerts again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gateway import logs
from gateway.pool import Worker

WEBHOOK_VERSION = "4"
ACTION_LABEL = "action"
ACTION = "drain_host"
HOST_LABEL = "host"
STATUSES = ("firing", "resolved")

AlertKey = tuple[tuple[str, str], ...]


class PayloadError(ValueError):
    """The body is not Alertmanager's webhook payload; the message names what is wrong."""


@dataclass(frozen=True)
class Alert:
    status: str
    labels: dict[str, str]
    fingerprint: str

    @property
    def key(self) -> AlertKey:
        return tuple(sorted(self.labels.items()))

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def host(self) -> str:
        return self.labels.get(HOST_LABEL, "")

    @property
    def drains(self) -> bool:
        return self.labels.get(ACTION_LABEL) == ACTION


def parse_payload(data: Any) -> list[Alert]:
    """The alerts of a webhook payload, every one checked before any takes effect."""
    if not isinstance(data, dict):
        raise PayloadError(f"the body must be a JSON object, got {type(data).__name__}")
    version = data.get("version")
    if version != WEBHOOK_VERSION:
        raise PayloadError(f"version: {version!r}, Alertmanager's webhook payload is version "
                           f"{WEBHOOK_VERSION!r}")
    if "status" in data and data["status"] not in STATUSES:
        raise PayloadError(f"status: {data['status']!r} is neither firing nor resolved")
    alerts = data.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError(f"alerts: must be a list, got {type(alerts).__name__}")
    return [parse_alert(i, a) for i, a in enumerate(alerts)]


def parse_alert(index: int, data: Any) -> Alert:
    where = f"alerts[{index}]"
    if not isinstance(data, dict):
        raise PayloadError(f"{where}: must be an object, got {type(data).__name__}")
    status = data.get("status")
    if status not in STATUSES:
        raise PayloadError(f"{where}.status: {status!r} is neither firing nor resolved")
    labels = data.get("labels")
    if not isinstance(labels, dict):
        raise PayloadError(f"{where}.labels: must be an object, got {type(labels).__name__}")
    for key, value in labels.items():
        if not isinstance(value, str):
            raise PayloadError(f"{where}.labels.{key}: must be a string, got {value!r}")
    fingerprint = data.get("fingerprint", "")
    if not isinstance(fingerprint, str):
        raise PayloadError(f"{where}.fingerprint: must be a string, got {fingerprint!r}")
    return Alert(status=status, labels=dict(labels), fingerprint=fingerprint)


@dataclass
class Outcome:
    """What one payload did: the answer's body."""

    drained: list[str]
    undrained: list[str]
    ignored: int

    def answer(self, holding: dict[str, list[str]]) -> dict[str, object]:
        return {"drained": self.drained, "undrained": self.undrained, "ignored": self.ignored,
                "holding": holding}


class AlertDrains:
    """Which firing drain alerts hold which workers, and which workers the alerts drained."""

    def __init__(self, workers: Callable[[], Iterable[Worker]],
                 set_draining: Callable[[Worker, bool], None], log: logging.Logger) -> None:
        self._workers = workers
        self._set_draining = set_draining
        self._log = log
        self._holds: dict[str, dict[AlertKey, str]] = {}  # worker -> {alert: alert name}
        self._ours: set[str] = set()  # workers an alert drained (not an operator)

    def apply(self, alerts: list[Alert]) -> Outcome:
        outcome = Outcome(drained=[], undrained=[], ignored=0)
        for alert in alerts:
            if not alert.drains or not alert.host:
                outcome.ignored += 1
                if alert.drains:
                    logs.event(self._log, "alert_drain_without_host", logging.WARNING,
                               alert=alert.name, labels=alert.labels)
                continue
            if alert.status == "firing":
                self._fire(alert, outcome.drained)
            else:
                self._resolve(alert, outcome.undrained)
        return outcome

    def holding(self) -> dict[str, list[str]]:
        """Worker -> the names of the firing alerts that hold it."""
        return {w: sorted(held.values()) for w, held in sorted(self._holds.items())}

    def drained_by_alerts(self) -> list[str]:
        return sorted(self._ours)

    def operator_set(self, worker: Worker) -> None:
        """An operator drained or undrained the worker by hand: the alerts leave it alone."""
        self._ours.discard(worker.name)

    def _host_workers(self, host: str) -> list[Worker]:
        return [w for w in self._workers() if w.name.startswith(f"{host}/")]

    def _fire(self, alert: Alert, drained: list[str]) -> None:
        workers = [w for w in self._host_workers(alert.host)
                   if alert.key not in self._holds.get(w.name, {})]
        if not workers:
            return  # a repeat, or no worker of that host here
        changed = []
        for worker in workers:
            held = self._holds.setdefault(worker.name, {})
            if not worker.draining:
                self._ours.add(worker.name)
                self._set_draining(worker, True)
                changed.append(worker.name)
            held[alert.key] = alert.name
        drained += changed
        logs.event(self._log, "alert_drain", logging.WARNING, alert=alert.name, host=alert.host,
                   fingerprint=alert.fingerprint, workers=[w.name for w in workers],
                   drained=changed)

    def _resolve(self, alert: Alert, undrained: list[str]) -> None:
        workers = [w for w in self._host_workers(alert.host)
                   if alert.key in self._holds.get(w.name, {})]
        if not workers:
            return  # resolved again, or fired before this gateway started
        changed, still_held = [], []
        for worker in workers:
            held = self._holds[worker.name]
            del held[alert.key]
            if held:
                still_held.append(worker.name)
                continue
            del self._holds[worker.name]
            if worker.name in self._ours:
                self._ours.discard(worker.name)
                self._set_draining(worker, False)
                changed.append(worker.name)
        undrained += changed
        logs.event(self._log, "alert_undrain", alert=alert.name, host=alert.host,
                   fingerprint=alert.fingerprint, workers=[w.name for w in workers],
                   undrained=changed, still_held=still_held)


def summary(drains: AlertDrains) -> dict[str, object]:
    """GET /admin/alerts: what the alerts hold now."""
    return {"holding": drains.holding(), "drained_by_alerts": drains.drained_by_alerts()}

