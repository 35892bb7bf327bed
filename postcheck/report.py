"""Check results: one live line per check, a summary line, the JSON and JUnit reports."""

from __future__ import annotations

import json
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, TextIO

import requests

from postcheck.httpclient import describe_error

Status = Literal["pass", "fail", "skip"]


class CheckFailed(Exception):
    """A check found something wrong; the message is the detail the report shows."""


class CheckSkipped(Exception):
    """A check cannot apply here (n/a panel, unreachable dependency); the message says why."""


@dataclass(frozen=True)
class CheckResult:
    name: str
    target: str
    status: Status
    detail: str
    duration: float


class Reporter:
    """Collects results from many threads and prints each one as it finishes."""

    def __init__(self, out: TextIO, secrets: Iterable[str] = ()) -> None:
        self._out = out
        self._secrets = [s for s in secrets if s]
        self._lock = threading.Lock()
        self.results: list[CheckResult] = []

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def record(
        self, name: str, target: str, status: Status, detail: str, duration: float
    ) -> CheckResult:
        one_line = " ".join(self.redact(detail).split())  # multi-line PromQL included
        result = CheckResult(name, target, status, one_line, round(duration, 3))
        with self._lock:
            self.results.append(result)
            line = f"{status.upper():<4}  {name}  {target}  {result.detail}"
            print(line, file=self._out, flush=True)
        return result

    def run(self, name: str, target: str, fn: Callable[[], str]) -> CheckResult:
        """Run one check: fn returns the pass detail or raises CheckFailed/CheckSkipped.

        Any other exception becomes a failed check too: the post-check never dies of one check.
        """
        start = time.monotonic()
        status: Status
        try:
            detail = fn()
            status = "pass"
        except CheckFailed as exc:
            status, detail = "fail", str(exc)
        except CheckSkipped as exc:
            status, detail = "skip", str(exc)
        except requests.RequestException as exc:
            status, detail = "fail", describe_error(exc)
        except Exception as exc:  # a bug or an unforeseen answer: report it, keep going
            status, detail = "fail", f"unexpected {type(exc).__name__}: {exc}"
        return self.record(name, target, status, detail, time.monotonic() - start)

    def skip(self, name: str, target: str, reason: str) -> CheckResult:
        return self.record(name, target, "skip", reason, 0.0)

    def checks(self) -> list[CheckResult]:
        with self._lock:
            return list(self.results)

    def counts(self) -> dict[str, int]:
        with self._lock:
            statuses = [r.status for r in self.results]
        return {
            "passed": statuses.count("pass"),
            "failed": statuses.count("fail"),
            "skipped": statuses.count("skip"),
            "total": len(statuses),
        }

    def summary_table(self) -> str:
        """Counts per kind of check (the name's first segment), one row each."""
        with self._lock:
            rows = counts_by_kind((r.name, r.status) for r in self.results)
        width = max([len(k) for k in rows] + [5])
        lines = [f"{'check':<{width}}  passed  failed  skipped"]
        lines += [f"{k:<{width}}  {p:>6}  {f:>6}  {s:>7}" for k, (p, f, s) in rows.items()]
        return "\n".join(lines)

    def summary_line(self) -> str:
        c = self.counts()
        line = f"{c['passed']} passed, {c['failed']} failed"
        if c["skipped"]:
            line += f", {c['skipped']} skipped (listed above as SKIP)"
        return line

    def exit_code(self) -> int:
        return 1 if self.counts()["failed"] else 0

    def to_json(self, extra_summary: dict[str, Any]) -> dict[str, Any]:
        summary: dict[str, Any] = {**self.counts(), "exit_code": self.exit_code(), **extra_summary}
        with self._lock:
            checks = [asdict(r) for r in self.results]
        return {"summary": summary, "checks": checks}


def counts_by_kind(results: Iterable[tuple[str, str]]) -> dict[str, list[int]]:
    """[passed, failed, skipped] per kind of check (the name's first segment)."""
    rows: dict[str, list[int]] = {}
    for name, status in results:
        row = rows.setdefault(name.split(".")[0].split(":")[0], [0, 0, 0])
        row[("pass", "fail", "skip").index(status)] += 1
    return rows


def write_json(path: str, report: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2, sort_keys=False)
        fh.write("\n")


# Characters XML 1.0 cannot carry at all (servers' answers end up in details).
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(text: str) -> str:
    return _XML_INVALID.sub("?", text)


def junit_xml(
    results: Iterable[CheckResult],
    *,
    suite: str = "postcheck",
    timestamp: str | None = None,
    duration: float | None = None,
    properties: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> bytes:
    """JUnit XML: one testcase per check, classname = the check name's first segment
    ("prometheus.queue_depth:..." -> "prometheus"), name = "check [target]"; a failed check
    has a <failure> with its detail, a skipped one <skipped> with the reason, a passed one
    its detail as <system-out>. `error`: the post-check could not run (exit 2)."""
    checks = list(results)
    failures = sum(r.status == "fail" for r in checks)
    skipped = sum(r.status == "skip" for r in checks)
    total_time = duration if duration is not None else sum(r.duration for r in checks)
    attrs = {
        "name": suite,
        "tests": str(len(checks) + (1 if error else 0)),
        "failures": str(failures),
        "errors": "1" if error else "0",
        "skipped": str(skipped),
        "time": f"{total_time:.3f}",
    }
    root = ET.Element("testsuites", {k: attrs[k] for k in attrs if k != "name"})
    root.set("name", suite)
    ts = ET.SubElement(root, "testsuite", attrs)
    if timestamp:
        ts.set("timestamp", timestamp)
    if properties:
        props = ET.SubElement(ts, "properties")
        for key, value in properties.items():
            ET.SubElement(props, "property", {"name": key, "value": _xml_text(str(value))})
    if error:
        case = ET.SubElement(ts, "testcase", {"classname": suite, "name": suite, "time": "0"})
        err = ET.SubElement(case, "error", {"message": _xml_text(error), "type": "usage"})
        err.text = _xml_text(error)
    for r in checks:
        case = ET.SubElement(
            ts,
            "testcase",
            {
                "classname": r.name.split(".", 1)[0].split(":", 1)[0],
                "name": _xml_text(f"{r.name} [{r.target}]"),
                "time": f"{r.duration:.3f}",
            },
        )
        detail = _xml_text(r.detail)
        if r.status == "fail":
            failure = ET.SubElement(case, "failure", {"message": detail, "type": "fail"})
            failure.text = detail
        elif r.status == "skip":
            ET.SubElement(case, "skipped", {"message": detail})
        else:
            ET.SubElement(case, "system-out").text = detail
    ET.indent(root)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True)) + b"\n"


def write_junit(path: str, xml: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(xml)
