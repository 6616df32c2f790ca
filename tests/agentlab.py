"""The idle agent's surroundings, for tests that run the real agent script.

Owns ``AgentApiPeer`` (a throwaway HTTP server speaking the server side of
the agent API and recording every request), the paths of the agent's
library, busybox, and a fake /proc + /sys tree (``fake_sysroot``).
"""

from __future__ import annotations

import base64
import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

REPO = Path(__file__).resolve().parents[1]


AGENT_LIB = REPO / "initrd" / "rootfs" / "usr" / "lib" / "provisiond"


BUSYBOX = shutil.which("busybox")


DROPBEARKEY = shutil.which("dropbearkey")


API = "/agent/v1"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class AgentApiPeer:
    """Server side of the agent API, for tests: records, queues, answers."""

    token: str
    authorized_keys: str = ""
    register_answer: dict = field(default_factory=lambda: {"resource": 1})
    requests: list[Request] = field(default_factory=list)
    results: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    max_wait: float = 25.0
    bind_port: int = 0

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: list[str] = []
        self._next_id = 1
        self._server = ThreadingHTTPServer(("127.0.0.1", self.bind_port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> AgentApiPeer:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def queue(self, kind: str, arg: str | None = None) -> int:
        """Queue a command; ``arg`` is sent base64-encoded. Returns its id."""
        with self._cond:
            cid = self._next_id
            self._next_id += 1
            text = f"id={cid}\nkind={kind}\n"
            if arg is not None:
                text += f"arg={base64.b64encode(arg.encode()).decode()}\n"
            self._queue.append(text)
            self._cond.notify_all()
        return cid

    def wait_for(self, pred: Callable[[], object], timeout: float) -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                got = pred()
                if got:
                    return got
                self._cond.wait(0.2)
        raise AssertionError(f"timed out after {timeout} s; requests: {self.summary()}")

    def of(self, path: str) -> list[Request]:
        with self._cond:
            return [r for r in self.requests if urlsplit(r.path).path == API + path]

    def summary(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.requests]

    def _record(self, req: Request) -> None:
        with self._cond:
            self.requests.append(req)
            self._cond.notify_all()

    def _next_command(self, wait: float) -> str | None:
        deadline = time.monotonic() + min(wait, self.max_wait)
        with self._cond:
            while not self._queue and time.monotonic() < deadline:
                self._cond.wait(deadline - time.monotonic())
            return self._queue.pop(0) if self._queue else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, code: int, body: bytes = b"", ctype: str = "text/plain") -> None:
                self.send_response(code)
                if code != 204:
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if code != 204:
                    self.wfile.write(body)

            def _serve(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                req = Request(self.command, self.path, dict(self.headers), body, time.time())
                peer._record(req)
                if self.headers.get("Authorization") != f"Bearer {peer.token}":
                    return self._reply(401, b"bad token\n")
                url = urlsplit(self.path)
                route = (self.command, url.path)
                if route == ("GET", API + "/authorized_keys"):
                    return self._reply(200, peer.authorized_keys.encode())
                if route == ("POST", API + "/register"):
                    answer = json.dumps(peer.register_answer).encode()
                    return self._reply(200, answer, "application/json")
                if route == ("POST", API + "/heartbeat"):
                    return self._reply(204)
                if route == ("GET", API + "/commands"):
                    wait = float(parse_qs(url.query).get("wait", ["0"])[0])
                    text = peer._next_command(wait)
                    return self._reply(200, text.encode()) if text else self._reply(204)
                parts = url.path.removeprefix(API + "/commands/").split("/")
                if self.command == "POST" and len(parts) == 2 and parts[1] == "result":
                    with peer._cond:
                        code = int(self.headers.get("X-Exit-Code", "-1"))
                        peer.results[int(parts[0])] = (code, body)
                        peer._cond.notify_all()
                    return self._reply(204)
                return self._reply(404, b"no such route\n")

            do_GET = _serve
            do_POST = _serve

        return Handler


def fake_sysroot(root: Path, cmdline: str) -> Path:
    """A minimal /proc + /sys for the agent's inventory."""
    files = {
        "proc/cmdline": cmdline + "\n",
        "proc/cpuinfo": "processor\t: 0\nmodel name\t: Test CPU\n\nprocessor\t: 1\n",
        "proc/meminfo": "MemTotal:        1000 kB\n",
        "proc/sys/kernel/osrelease": "6.1.0-test\n",
        "sys/block/vda/size": "2048\n",
        "sys/block/vda/queue/rotational": "0\n",
        "sys/class/net/eth0/address": "52:54:00:aa:bb:cc\n",
        "sys/class/net/eth0/carrier": "1\n",
        "sys/class/net/eth0/device/driver/.keep": "",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root
