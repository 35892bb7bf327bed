"""A FAKE vLLM worker (stdlib only, not vLLM) for the gateway's Molecule scenario: GET /health
200, GET /v1/models, POST /v1/* answers a completion whose id names this fake. Usage:
fake_worker.py NAME PORT (listens on 127.0.0.1)."""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME, PORT = sys.argv[1], int(sys.argv[2])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/health":
            self.answer(200, {})
        elif self.path == "/v1/models":
            self.answer(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
        else:
            self.answer(404, {"error": "not found"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.answer(200, {
            "id": f"cmpl-{NAME}", "object": "text_completion", "model": body.get("model"),
            "choices": [{"index": 0, "text": f"answered by {NAME}", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })

    def log_message(self, format: str, *args: object) -> None:
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
