"""The idle agent (initrd/rootfs/usr/lib/provisiond/agent) against a test peer.

Owns: ``AgentApiPeer``, a throwaway HTTP server that speaks the server side of
the agent API contract and records every request (also used by the QEMU
boot test), and tests that run the real agent script under the host's busybox
sh, with real busybox wget over loopback, against it. The agent's /proc and
/sys come from a fake tree (SYSROOT), its state lives in a temporary
directory, dropbear is not started and power actions are recorded to a file.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]

REPO = Path(__file__).resolve().parents[2]
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


@pytest.fixture
def peer() -> Iterator[AgentApiPeer]:
    p = AgentApiPeer(token="s3cret-token", authorized_keys="ssh-ed25519 AAAAtest test\n")
    p.register_answer = {"resource": 7, "heartbeat_interval": 1}
    p.start()
    yield p
    p.stop()


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


@dataclass
class AgentRun:
    proc: subprocess.Popen
    dir: Path

    def console(self) -> str:
        p = self.dir / "console"
        return p.read_text() if p.exists() else ""

    def power(self) -> str:
        p = self.dir / "power"
        return p.read_text() if p.exists() else ""

    def stop(self) -> str:
        """Stop the agent's process group (ours alone); return its stderr."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        _, err = self.proc.communicate(timeout=10)
        return err.decode(errors="replace")


@pytest.fixture
def run_agent(tmp_path: Path) -> Iterator[Callable[[str], AgentRun]]:
    if BUSYBOX is None or DROPBEARKEY is None:
        pytest.skip(reason="needs busybox (busybox-static) and dropbearkey (dropbear-bin) on PATH")
    runs: list[AgentRun] = []
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for applet in ("wget", "timeout", "base64", "sh", "od", "sleep", "head", "sed", "tr"):
        (bindir / applet).symlink_to(BUSYBOX)

    def start(cmdline: str) -> AgentRun:
        d = tmp_path / f"agent{len(runs)}"
        (d / "run").mkdir(parents=True)
        fake_sysroot(d / "sys", cmdline)
        env = {
            "PATH": f"{bindir}:{os.environ['PATH']}",
            "AGENT_LIB": str(AGENT_LIB),
            "SYSROOT": str(d / "sys"),
            "PROVISIOND_RUN": str(d / "run"),
            "PROVISIOND_CONSOLE": str(d / "console"),
            "PROVISIOND_FAKE_POWER": str(d / "power"),
            "AGENT_HOSTKEY": str(d / "hostkey"),
            "AGENT_AUTH_KEYS": str(d / "authorized_keys"),
            "AGENT_SSH": "0",
        }
        proc = subprocess.Popen(
            [BUSYBOX, "sh", str(AGENT_LIB / "agent")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        runs.append(AgentRun(proc, d))
        return runs[-1]

    yield start
    for r in runs:
        r.stop()


def cmdline_for(peer: AgentApiPeer, token: str | None = None) -> str:
    return (
        f"console=ttyS0 provisiond.url=http://127.0.0.1:{peer.port}/ "
        f"provisiond.token={token or peer.token} BOOTIF=01-52-54-00-AA-BB-CC"
    )


def test_register_carries_token_inventory_and_hostkey(peer, run_agent):
    agent = run_agent(cmdline_for(peer))
    reg = peer.wait_for(lambda: peer.of("/register"), 15)[0]
    assert reg.headers["Authorization"] == "Bearer s3cret-token"
    assert reg.headers["Content-Type"] == "application/json"
    body = json.loads(reg.body)
    assert body["mac"] == "52:54:00:aa:bb:cc"
    assert body["hostkey"].startswith("ssh-ed25519 AAAA")
    inv = body["inventory"]
    assert inv["memory_bytes"] == 1000 * 1024
    assert inv["cpu"] == {"model": "Test CPU", "count": 2}
    assert inv["disks"][0]["size_bytes"] == 2048 * 512
    assert inv["kernel"] == "6.1.0-test"
    assert (agent.dir / "authorized_keys").read_text() == "ssh-ed25519 AAAAtest test\n"
    peer.wait_for(lambda: "PROVISIOND-AGENT-UP mac=52:54:00:aa:bb:cc" in agent.console(), 5)
    assert "s3cret-token" not in agent.console() + agent.stop()
    assert "s3cret-token" not in (agent.dir / "run" / "agent.log").read_text()


def test_heartbeats_follow_the_register_interval(peer, run_agent):
    run_agent(cmdline_for(peer))
    beats = peer.wait_for(lambda: len(peer.of("/heartbeat")) >= 3 and peer.of("/heartbeat"), 20)
    gaps = [b.at - a.at for a, b in itertools.pairwise(beats)]
    assert all(0.9 <= g <= 3.5 for g in gaps), gaps  # 1 s interval + 0..2 s jitter
    assert all(b.headers["Authorization"] == "Bearer s3cret-token" for b in beats)


RUN_CASES = [
    # (shell command, exit code, expected output)
    ("echo hello; echo oops >&2; exit 3", 3, b"hello\noops\n"),
    ("printf 'a\\tb\"c'", 0, b'a\tb"c'),
    ("true", 0, b""),
]


@pytest.mark.parametrize(("script", "code", "output"), RUN_CASES)
def test_run_reports_exit_code_and_output(peer, run_agent, script, code, output):
    run_agent(cmdline_for(peer))
    cid = peer.queue("run", script)
    got = peer.wait_for(lambda: peer.results.get(cid), 20)
    assert got == (code, output)


def test_run_output_is_bounded(peer, run_agent):
    run_agent(cmdline_for(peer))
    cid = peer.queue("run", "head -c 1100000 /dev/zero; exit 4")
    code, body = peer.wait_for(lambda: peer.results.get(cid), 30)
    assert code == 4
    assert body.startswith(b"?" * 1048576)  # NUL bytes become "?" (see post_result)
    assert body[1048576:] == b"\n[provisiond-agent: 51424 more bytes of output dropped]\n"


def test_unknown_kind_and_bad_arg(peer, run_agent):
    run_agent(cmdline_for(peer))
    unknown = peer.queue("frobnicate")
    bad = peer.queue("run")
    code, body = peer.wait_for(lambda: peer.results.get(unknown), 20)
    assert (code, body) == (127, b'provisiond-agent: unknown command kind "frobnicate"\n')
    assert peer.wait_for(lambda: peer.results.get(bad), 10)[0] == 2


@pytest.mark.parametrize("kind", ["reboot", "poweroff"])
def test_power_commands_report_first(peer, run_agent, kind):
    agent = run_agent(cmdline_for(peer))
    cid = peer.queue(kind)
    assert peer.wait_for(lambda: peer.results.get(cid), 20)[0] == 0
    peer.wait_for(lambda: agent.power() == f"{kind}\n", 5)


def test_wrong_token_is_reported_and_never_printed(peer, run_agent):
    agent = run_agent(cmdline_for(peer, token="wrong-token"))
    peer.wait_for(lambda: "PROVISIOND-AGENT-UNAUTHORIZED" in agent.console(), 15)
    assert peer.of("/register")[0].headers["Authorization"] == "Bearer wrong-token"
    assert not peer.of("/heartbeat")
    assert "wrong-token" not in agent.console() + agent.stop()


def test_agent_retries_until_the_server_appears(run_agent):
    late = AgentApiPeer(token="t0k")
    port = late.port
    late.stop()  # the port is closed now: connection refused
    agent = run_agent(f"provisiond.url=http://127.0.0.1:{port} provisiond.token=t0k")
    time.sleep(3)
    assert agent.proc.poll() is None  # still retrying, not exited
    assert "PROVISIOND-AGENT-UP" not in agent.console()
    back = AgentApiPeer(token="t0k", bind_port=port).start()
    try:
        back.wait_for(lambda: back.of("/register"), 30)
        back.wait_for(lambda: "PROVISIOND-AGENT-UP" in agent.console(), 5)
    finally:
        back.stop()
