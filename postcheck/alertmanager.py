"""The dead man's switch: Prometheus's always-firing Watchdog alert reaches every
Alertmanager that Prometheus sends to (its /api/v1/alertmanagers), read from each one's
/api/v2/alerts. Proves the Prometheus -> Alertmanager link, not the receivers beyond."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests

from postcheck.httpclient import describe_error, session, status_detail
from postcheck.prometheus import Prometheus
from postcheck.report import CheckFailed, CheckSkipped

WATCHDOG = "Watchdog"
ALERTS_PATH = "/api/v2/alerts"


def alertmanager_urls(prom: Prometheus) -> list[str]:
    """Base URLs of the Alertmanagers Prometheus sends to; CheckFailed for dropped ones."""
    data = prom.data("/api/v1/alertmanagers")
    dropped = [a.get("url", "?") for a in data.get("droppedAlertmanagers") or []]
    if dropped:
        raise CheckFailed(f"Prometheus dropped Alertmanagers: {', '.join(dropped)}")
    return sorted(
        str(a["url"]).removesuffix(ALERTS_PATH).removesuffix("/api/v1/alerts")
        for a in data.get("activeAlertmanagers") or []
        if a.get("url")
    )


def has_watchdog(s: requests.Session, base_url: str, timeout_s: float) -> str | None:
    """None when the Watchdog is among this Alertmanager's alerts, else what is wrong."""
    try:
        resp = s.get(f"{base_url}{ALERTS_PATH}", params={"filter": f'alertname="{WATCHDOG}"'},
                     timeout=timeout_s)
    except requests.RequestException as exc:
        return describe_error(exc)
    if resp.status_code != 200:
        return status_detail(resp)
    try:
        alerts: Any = resp.json()
    except ValueError:
        return "no JSON (is this Alertmanager?)"
    return None if isinstance(alerts, list) and alerts else f"no {WATCHDOG} alert"


def watchdog_check(prom: Prometheus, timeout_s: float, wait_s: float) -> Callable[[], str]:
    """The check: every Alertmanager holds the Watchdog, waiting up to wait_s for it (one
    evaluation and one send of Prometheus after a restart)."""

    def check() -> str:
        if "alertmanagers:" not in str(prom.data("/api/v1/status/config").get("yaml", "")):
            raise CheckSkipped("Prometheus sends alerts to no Alertmanager")
        s = session()
        deadline = time.monotonic() + wait_s
        while True:
            # Prometheus lists its Alertmanagers once it has discovered them.
            urls = alertmanager_urls(prom)
            missing = {u: why for u in urls if (why := has_watchdog(s, u, timeout_s))}
            if (urls and not missing) or time.monotonic() > deadline:
                break
            time.sleep(1)
        if not urls:
            raise CheckFailed("Prometheus has Alertmanagers configured but none discovered")
        if missing:
            raise CheckFailed("; ".join(f"{u}: {why}" for u, why in sorted(missing.items())))
        return f"{WATCHDOG} at all {len(urls)} Alertmanagers: {', '.join(urls)}"

    return check
