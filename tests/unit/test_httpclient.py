"""Failures described in words, never a traceback."""

from __future__ import annotations

import requests

from postcheck.httpclient import describe_error


def test_describe_error() -> None:
    dns = requests.ConnectionError(
        "HTTPConnectionPool(host='gpu9', port=8000): Max retries exceeded (Caused by "
        "NameResolutionError(\"Failed to resolve 'gpu9' ([Errno -2] Name or service not known)\"))"
    )
    assert describe_error(dns).startswith("DNS lookup failed")
    refused = requests.ConnectionError("... [Errno 111] Connection refused'))")
    assert describe_error(refused).startswith("connection refused")
    assert describe_error(requests.ConnectionError("[Errno 113] No route to host")).startswith(
        "host unreachable"
    )
    assert describe_error(requests.ConnectTimeout("x")).startswith("connect timeout")
    assert describe_error(requests.ReadTimeout("x")).startswith("timeout")
    assert describe_error(requests.exceptions.InvalidURL("bad")).startswith("invalid URL")


def test_describe_error_names_the_url() -> None:
    exc = requests.ReadTimeout("x", request=requests.Request("GET", "http://h:1/health").prepare())
    assert "(http://h:1/health)" in describe_error(exc)
