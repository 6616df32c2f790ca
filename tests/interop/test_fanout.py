"""Fan-out: one image to three machines over real udp-sender/udp-receiver, with faults.

The daemon runs in a Lab namespace (its bridge ``br0`` limited to 200 Mbit/s
with tbf, so the transfer lasts long enough to hurt it); three real agents
(busybox sh, ``udp-receiver`` from the initrd's EXTRA_BINS) in their own
namespaces behind that bridge. The bulk "assign one image to many" action
starts them. Faults are real network and process events:

* machine b: nftables in its namespace rewrites 4 bytes inside the first
  udpcast data packet it receives (checksum fixed, so the kernel and udpcast
  accept it) — the chunk fails its sha256 and is repaired over HTTP;
* machine c: its whole agent (udp-receiver included) is frozen (SIGSTOP)
  once it has received data — the sender drops it and a and b finish
  without waiting; thawed, c fetches what it lacks over HTTP.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.agentlab import BUSYBOX
from tests.daemonlab import LabDaemon, lab_config
from tests.hostagent import HostAgent
from tests.netlab import Lab, sh

pytestmark = [pytest.mark.interop, pytest.mark.timeout(600)]
MiB = 2**20
MACS = ("52:54:00:5f:00:01", "52:54:00:5f:00:02", "52:54:00:5f:00:03")
DISK = 128 * MiB
PICKUP = 20  # s: [agent] pickup_timeout of the lab (the default is 300)
# s: the lab agents' long poll (AGENT_LONG_POLL; 25 s in the initrd) and a margin to wait out. A
# machine that dies while its poll is open gets its command handed to that dead poll: it fails
# by heartbeat silence instead
AGENT_POLL = 5
LONG_POLL = AGENT_POLL + 3

MANGLE = """table inet fanouttest {
  chain pre { type filter hook prerouting priority -300;
    udp dport 9100-9199 udp length > 1000 quota until 1500 bytes @th,800,32 set 0x44454144
  }
}
"""


def _needs() -> None:
    for tool in ("udp-sender", "udp-receiver", "nft", "tc", "curl"):
        if not shutil.which(tool):
            pytest.skip(reason=f"needs {tool} (apt-get install udpcast nftables iproute2 curl)")
    if BUSYBOX is None:
        pytest.skip(reason="needs busybox (busybox-static)")


@pytest.fixture
def lab3(tmp_path):
    _needs()
    with Lab("fan") as lab:
        extra = f'[[storage]]\nname = "local"\nbackend = "file"\npath = "{tmp_path / "images"}"\n'
        extra += f'[images]\nimport_dirs = ["{tmp_path}"]\n'
        extra += "[local]\nconfirm_boot = false\n"  # host agents boot no OS
        # a machine that never picks up its command fails after this (provisiond/pickup.py)
        extra += f"[agent]\npickup_timeout = {PICKUP}\npickup_boot_timeout = {PICKUP}\n"
        d = LabDaemon(lab, tmp_path, lab_config(lab, tmp_path / "state", extra))
        d.cli("init")
        d.add_fake_kernel()
        d.start()
        agents = []
        try:
            for i, mac in enumerate(MACS):
                ip = f"{lab.net}.{51 + i}"
                cl = lab.add_client(mac=mac, address=ip)
                agents.append(HostAgent(d, cl, tmp_path / f"m{i}", mac, DISK, ip=ip,
                                     long_poll=AGENT_POLL))  # fmt: skip
            deadline = time.monotonic() + 60
            for mac, a in zip(MACS, agents, strict=True):
                while d.cli_json("resource", "show", mac)["state"] != "idle":
                    assert time.monotonic() < deadline, a.log()
                    time.sleep(0.3)
            yield lab, d, agents
        finally:
            for a in agents:
                os.killpg(a.proc.pid, signal.SIGCONT) if a.proc.poll() is None else None
                a.stop()
            d.stop()


def make_image(path: Path, size: int = 96 * MiB) -> bytes:
    """48 MiB of random data in three runs, holes between, an unaligned random tail."""
    with open(path, "wb") as fh:
        fh.truncate(size)
        for start in (0, 24 * MiB, 60 * MiB):
            fh.seek(start)
            fh.write(os.urandom(16 * MiB - 4096))
        fh.seek(size - 4096)
        fh.write(os.urandom(4096))
    return path.read_bytes()


def _bulk(d: LabDaemon, tmp_path: Path, image: str) -> list[int]:
    """The bulk "assign" action, as POST /api/v1/resources/bulk runs it."""
    from provisiond import bulk
    from provisiond.config import load
    from provisiond.db import Database

    db = Database(f"sqlite:///{next((tmp_path / 'state').glob('*.db'))}")
    try:
        items = bulk.run(load(d.cfg), db, list(MACS), "assign", mode="local", image=image)
    finally:
        db.dispose()
    assert all(i.ok for i in items), items
    return [int(re.search(r"job (\d+)", i.detail).group(1)) for i in items]


def _done(a: HostAgent) -> int:
    """Bytes the agent has verified from the multicast (its done.mc<slot> files)."""
    total = 0
    for p in (a.dir / "run" / "stream").glob("done.mc*"):
        try:
            total += int(p.read_text().strip() or 0)
        except (OSError, ValueError):
            pass
    return total


def _agent_output(d: LabDaemon, job_id: int) -> str:
    cmd = d.cli_json("job", "show", str(job_id))["params"]["command"]
    return d.cli_json("job", "show", str(cmd))["log"]


def test_fanout_to_three_repairs_a_corrupt_chunk_and_drops_a_frozen_machine(lab3, tmp_path):
    lab, d, (a, b, c) = lab3
    image = make_image(tmp_path / "master.raw")
    d.cli("image", "import", str(tmp_path / "master.raw"), "--name", "img")
    sh("ip", "netns", "exec", lab.server.name, "tc", "qdisc", "replace", "dev", "br0", "root",
       "tbf", "rate", "200mbit", "burst", "256k", "latency", "100ms")  # fmt: skip
    subprocess.run(["ip", "netns", "exec", lab.clients[1].name, "nft", "-f", "-"],
                   input=MANGLE, text=True, check=True)  # fmt: skip
    jobs = _bulk(d, tmp_path, "img")

    deadline = time.monotonic() + 90
    while _done(c) == 0:  # c has verified a chunk that came by multicast: freeze it
        assert time.monotonic() < deadline, c.log()
        time.sleep(0.05)
    os.killpg(c.proc.pid, signal.SIGSTOP)
    frozen = time.monotonic()
    try:  # b does not wait for the frozen c (thawed before its 60 s heartbeat limit)
        jb = d.wait_job(jobs[1], timeout=50)
        others = time.monotonic() - frozen
    finally:
        os.killpg(c.proc.pid, signal.SIGCONT)
    ja = d.wait_job(jobs[0], timeout=150)
    jc = d.wait_job(jobs[2], timeout=150)

    for job, agent in ((ja, a), (jb, b), (jc, c)):
        assert job["state"] == "succeeded", (job, agent.log())
        assert agent.disk.read_bytes()[: len(image)] == image
        assert "fan-out: one of 3 machines" in job["log"], job["log"]
        assert "fan-out progress:" in job["log"], job["log"]
    assert others < 50, f"b waited {others:.0f} s for the frozen machine"
    out_a, out_b, out_c = (_agent_output(d, j) for j in jobs)
    k = int(re.search(r"multicast: \d+ of (\d+) chunks", out_a).group(1))
    if "r-5254005f0001 (" in jb["log"]:  # a joined in time (a very loaded host may delay it)
        assert f"multicast: {k} of {k} chunks verified, 0 failed" in out_a, out_a
        assert f"({k} over multicast, 0 repaired over HTTP)" in out_a, out_a
    assert re.search(r"multicast: \d+ of \d+ chunks verified, 1 failed their sha256", out_b), out_b
    assert re.search(r"\(\d+ over multicast, 1 repaired over HTTP\)", out_b), out_b
    rep_c = int(re.search(r"(\d+) repaired over HTTP", out_c).group(1))
    assert 0 < rep_c < k, out_c
    dropped = f"fan-out: dropped r-5254005f0003 ({lab.net}.53): it stopped answering"
    assert dropped in jb["log"], jb["log"]
    assert "fan-out: multicast complete: " in jb["log"] and "r-5254005f0002 done" in jb["log"]
    assert d.cli_json("resource", "show", MACS[2])["state"] == "active"


def test_fanout_leaves_a_machine_that_never_joins_behind(lab3, tmp_path):
    """c's agent is gone (the machine died after it was assigned): a and b do not wait for it."""
    _lab, d, (a, b, c) = lab3
    image = make_image(tmp_path / "master.raw")
    d.cli("image", "import", str(tmp_path / "master.raw"), "--name", "img")
    c.stop()
    time.sleep(LONG_POLL)  # its last long poll has ended: nothing can take c's command
    t0 = time.monotonic()
    jobs = _bulk(d, tmp_path, "img")
    ja = d.wait_job(jobs[0], timeout=120)
    jb = d.wait_job(jobs[1], timeout=30)
    took = time.monotonic() - t0
    for job, agent in ((ja, a), (jb, b)):
        assert job["state"] == "succeeded", (job, agent.log())
        assert agent.disk.read_bytes()[: len(image)] == image
    # udp-sender starts 20 s (max-wait) after the first receiver joined, without c
    assert "fan-out: transfer started to 2 receivers; not joined: r-5254005f0003" in ja["log"]
    assert took < 90, f"a and b took {took:.0f} s"
    assert "over multicast, 0 repaired over HTTP)" in _agent_output(d, jobs[0])
    # c never picks up its command: PICKUP s after it was queued, its job and machine fail
    jc = d.wait_job(jobs[2], timeout=PICKUP + 30)
    why = "r-5254005f0003 did not pick up its deploy command "
    assert jc["state"] == "failed" and why in jc["outcome"], jc
    assert f"within {PICKUP} s" in jc["outcome"], jc["outcome"]
    res = d.cli_json("resource", "show", MACS[2])
    assert res["state"] == "failed", res
    assert d.cli_json("job", "show", str(jobs[0]))["state"] == "succeeded"


def test_a_unicast_deploy_whose_machine_never_picks_up_fails(lab3, tmp_path):
    """One machine, no fan-out: its agent is gone; the job fails after the pickup bound."""
    _lab, d, (a, _b, _c) = lab3
    make_image(tmp_path / "master.raw", 8 * MiB)
    d.cli("image", "import", str(tmp_path / "master.raw"), "--name", "img")
    a.stop()
    time.sleep(LONG_POLL)  # its last long poll has ended: nothing can take its command
    t0 = time.monotonic()
    d.cli(
        "appliance",
        "create",
        "--name",
        "solo",
        "--resource",
        MACS[0],
        "--mode",
        "local",
        "--image",
        "img",
    )
    d.cli("appliance", "start", "solo")
    job_id = next(j["id"] for j in d.cli_json("job", "list") if j["kind"] == "appliance.start")
    job = d.wait_job(job_id, timeout=PICKUP + 60)
    took = time.monotonic() - t0
    assert job["state"] == "failed", job
    assert "r-5254005f0001 did not pick up its deploy command" in job["outcome"], job
    assert PICKUP - 5 < took < PICKUP + 45, took
    app = d.cli_json("appliance", "show", "solo")
    assert app["state"] == "failed" and "did not pick up" in app["state_reason"], app
    res = d.cli_json("resource", "show", MACS[0])
    assert res["state"] == "failed", res
