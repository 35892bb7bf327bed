"""Webhook test receiver (stdlib): appends each POST as a JSON line {path, body} to a file;
answers 500 while the file <log>.fail exists. Usage: receiver.py ADDRESS PORT LOG"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ADDRESS, PORT, LOG = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if LOG.with_suffix(".fail").exists():
            self.send_response(500)
        else:
            with LOG.open("a") as f:
                f.write(json.dumps({"path": self.path, "body": json.loads(body)}) + "\n")
            self.send_response(200)
        self.end_headers()


ThreadingHTTPServer((ADDRESS, PORT), Handler).serve_forever()
