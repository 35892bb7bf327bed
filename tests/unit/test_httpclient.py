"""Failures described in words, never a traceback; the load's kept-alive connections."""

from __future__ import annotations

import http.server
import threading
import time

import requests

from postcheck.httpclient import KeepAlive, describe_error


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


def test_keepalive_reuses_a_busy_connection_but_not_one_idle_near_the_server_s_timeout() -> None:
    """vLLM closes idle connections after 5 s: a request written onto one it is closing gets
    no answer. Requests close together share a connection; after IDLE_REUSE_S idle, a new one."""
    ports: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            ports.append(self.client_address[1])
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = KeepAlive(f"http://127.0.0.1:{server.server_address[1]}", None, timeout=5)
        client.IDLE_REUSE_S = 0.3
        assert client.request("GET", "/a") == (200, b"ok")
        assert client.request("GET", "/b") == (200, b"ok")
        time.sleep(0.4)
        assert client.request("GET", "/c") == (200, b"ok")
        client.close()
    finally:
        server.shutdown()
    assert ports[0] == ports[1] and ports[2] != ports[1], ports
