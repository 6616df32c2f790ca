"""The idle agent (initrd/rootfs/usr/lib/provisiond/agent) against a test peer.

Owns: ``AgentApiPeer``, a throwaway HTTP server that speaks the server side of
the agent API contract and records every request (also used by the QEMU
boot test), and tests that run the real agent script under the host's busybox
sh, with real busybox wget over loopback, against it. The agent's /proc and
/sys come from a fake tree (SYSROOT), its state lives in a temporary
directory, dropbear is not started and power actions are recorded to a file.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.agentlab import (  # noqa: F401
    AGENT_LIB,
    API,
    BUSYBOX,
    DROPBEARKEY,
    REPO,
    AgentApiPeer,
    Request,
    fake_sysroot,
)

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]


@pytest.fixture
def peer() -> Iterator[AgentApiPeer]:
    p = AgentApiPeer(token="s3cret-token", authorized_keys="ssh-ed25519 AAAAtest test\n")
    p.register_answer = {"resource": 7, "heartbeat_interval": 1}
    p.start()
    yield p
    p.stop()


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
