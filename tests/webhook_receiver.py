"""A real webhook receiver for tests: an HTTP server on 127.0.0.1 that checks signatures the
way docs/webhooks.md tells receivers to (plain hmac, not the server's code) and fails on
purpose when told to: answer 500, hang past the sender's timeout, or be down (refused)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from server import free_port

HANG_LIMIT = 60.0  # a hanging answer waits at most this long for `release`


@dataclass(frozen=True)
class Received:
    path: str
    delivery_id: str
    kind: str
    body: dict[str, Any]
    signed: bool  # the signature matched the secret and the timestamp is recent
    answer: str  # "ok", "500", "hang", "bad_signature"


def signature_ok(secret: str, header: str, raw: bytes, now: float) -> bool:
    """What every receiver should do (docs/webhooks.md)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    if not fields.get("t", "").isdigit() or abs(now - int(fields["t"])) > 300:
        return False
    expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + raw,
                        hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


class Receiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.secrets: dict[str, str] = {}  # path -> secret of the subscription posting there
        self.plan: list[str] = []  # answers for the next requests, in order ("500", "hang")
        self.default = "ok"  # once the plan is used up
        self.received: list[Received] = []
        self.release = threading.Event()  # ends every hanging answer
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.handle(self, raw)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the listening socket: new connections are refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def close(self) -> None:
        self.release.set()
        self.stop()

    def handle(self, request: BaseHTTPRequestHandler, raw: bytes) -> None:
        secret = self.secrets.get(request.path.split("?")[0], "")
        signed = signature_ok(secret, request.headers.get("X-Realtime-Signature", ""), raw,
                              time.time())
        with self._lock:
            answer = self.plan.pop(0) if self.plan else self.default
            if answer == "ok" and not signed:
                answer = "bad_signature"
            body = json.loads(raw)
            self.received.append(Received(
                request.path, request.headers.get("X-Realtime-Delivery", ""),
                request.headers.get("X-Realtime-Event", ""), body, signed, answer,
            ))
        if answer == "hang":
            self.release.wait(HANG_LIMIT)
        status = {"ok": 200, "bad_signature": 401}.get(answer, 500)
        try:
            request.send_response(status)
            request.send_header("Content-Type", "text/plain")
            request.end_headers()
            request.wfile.write(b"ok" if status == 200 else b"receiver failing on purpose")
        except OSError:
            pass  # the sender gave up (timeout)

    def accepted(self, path: str | None = None) -> list[Received]:
        """Requests answered 200 (with a valid signature), in arrival order."""
        with self._lock:
            return [r for r in self.received
                    if r.answer == "ok" and (path is None or r.path == path)]

    def count(self) -> int:
        with self._lock:
            return len(self.received)
