"""--junit: JUnit XML that CI systems read, checked with xml.etree."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from conftest import FAST, Result
from fakes import FakeVLLM

from postcheck.report import CheckResult, junit_xml


def test_junit_report_against_fake_vllm(
    tmp_path: Path,
    fake_vllm: Callable[..., FakeVLLM],
    run_postcheck: Callable[..., Result],
) -> None:
    good, stopped = fake_vllm(), fake_vllm()
    stopped.stop()
    xml_path = tmp_path / "postcheck.xml"

    r = run_postcheck(
        "--worker",
        f"{good.url},tiny",
        "--worker",
        f"{stopped.url},tiny",
        *FAST,
        "--junit",
        str(xml_path),
    )

    assert r.code == 1
    root = ET.parse(xml_path).getroot()
    assert root.tag == "testsuites"
    [suite] = root.findall("testsuite")
    summary = r.report["summary"]
    assert suite.get("name") == "postcheck"
    assert int(suite.get("tests", "")) == summary["total"]
    assert int(suite.get("failures", "")) == summary["failed"] > 0
    assert int(suite.get("skipped", "")) == summary["skipped"] > 0
    assert suite.get("errors") == "0" and float(suite.get("time", "")) > 0
    cases = suite.findall("testcase")
    assert len(cases) == summary["total"]
    by_name = {c.get("name"): c for c in cases}
    for check in r.report["checks"]:
        case = by_name[f"{check['name']} [{check['target']}]"]
        assert case.get("classname") == check["name"].split(".")[0].split(":")[0]
        failure, skipped = case.find("failure"), case.find("skipped")
        if check["status"] == "fail":
            assert failure is not None and skipped is None
            assert failure.text == check["detail"] == failure.get("message")
        elif check["status"] == "skip":
            assert skipped is not None and failure is None
            assert skipped.get("message") == check["detail"]
        else:
            assert failure is None and skipped is None
            assert case.findtext("system-out") == check["detail"]
    health = by_name[f"health [{stopped.instance}]"]
    assert "connection refused" in (health.findtext("failure") or "")
    classes = {c.get("classname") for c in cases}
    assert {"health", "metrics", "load", "prometheus", "grafana", "dashboard"} <= classes


def test_junit_on_bad_usage_is_one_error(
    tmp_path: Path, run_postcheck: Callable[..., Result]
) -> None:
    xml_path = tmp_path / "postcheck.xml"

    r = run_postcheck("--worker", "ftp://x", "--junit", str(xml_path))

    assert r.code == 2
    suite = ET.parse(xml_path).getroot().find("testsuite")
    assert suite is not None and suite.get("errors") == "1" and suite.get("tests") == "1"
    error = suite.find("testcase/error")
    assert error is not None and "bad --worker URL" in (error.get("message") or "")


def test_junit_text_is_always_valid_xml() -> None:
    odd = CheckResult("completion", "w<1>&", "fail", 'answer "\x00\x1b[31m" <b>', 0.5)

    root = ET.fromstring(junit_xml([odd]))

    case = root.find("testsuite/testcase")
    assert case is not None and case.get("name") == "completion [w<1>&]"
    assert case.findtext("failure") == 'answer "??[31m" <b>'
