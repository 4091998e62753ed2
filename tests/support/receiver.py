"""A real HTTP webhook receiver on a fixed port that can go down and come back."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cloud_bridge.webhooks import verify


@dataclass(frozen=True, slots=True)
class Received:
    delivery: str
    event_type: str
    body: dict[str, Any]
    signature_ok: bool


class Receiver:
    """Records every POST; ``start()``/``stop()`` as often as wanted on the same port."""

    def __init__(self, port: int, secret: str = "", status: int = 200) -> None:
        self.port = port
        self.secret = secret
        self.status = status
        self.got: list[Received] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/fleet"

    def start(self) -> Receiver:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                ok = verify(
                    outer.secret,
                    self.headers.get("X-Telematics-Timestamp", ""),
                    self.headers.get("X-Telematics-Signature", ""),
                    body,
                    time.time(),
                )
                with outer._lock:
                    outer.got.append(
                        Received(
                            self.headers.get("X-Telematics-Delivery", ""),
                            self.headers.get("X-Telematics-Event", ""),
                            json.loads(body),
                            ok,
                        )
                    )
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.got)
