"""A chat-completions server on 127.0.0.1 for the judge tests: each test writes its replies."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer


class Server:
    """An HTTP server on 127.0.0.1 whose replies a test writes: `respond(handler, content)` sends the answer to a
    request whose last message is `content`. Every request is kept in `requests` (path, auth header, body)."""

    def __init__(self, respond, threaded: bool = True):
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                respond(self, body["messages"][-1]["content"])

        self.httpd = (ThreadingHTTPServer if threaded else HTTPServer)(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def send(handler, status: int, payload, headers: dict | None = None, length: int | None = None):
    """Answer with `payload` (JSON, or raw bytes), announcing `length` bytes if given."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    handler.send_response(status)
    for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(data) if length is None else length))
    handler.end_headers()
    handler.wfile.write(data)
