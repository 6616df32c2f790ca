"""Local deploy, capture and erase through the real daemon and the real agent.

The daemon runs in a Lab namespace with a file storage; the machine is the
real agent script (busybox sh, busybox wget/dd/nc/awk applets) in a client
namespace, with a fake /sys (tests/interop/test_initrd_agent.py) and a
regular file as its disk. Power actions are recorded to a file. The QEMU
test bed proves the same with real disks (tests/testbed/test_local_vm.py).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.daemonlab import LabDaemon
from tests.hostagent import HostAgent
from tests.netlab import Lab, sh
from tests.streamlab import MAC, MiB, image_sha256, job_of
from tests.streamlab import lab as lab  # a fixture

pytestmark = [pytest.mark.interop, pytest.mark.timeout(240)]


def make_image(path: Path, size: int = 48 * MiB) -> bytes:
    """Sparse image: random chunks, a compressible chunk, holes, an unaligned tail."""
    with open(path, "wb") as fh:
        fh.truncate(size)
        fh.seek(0)
        fh.write(os.urandom(12 * MiB))
        fh.seek(13 * MiB + 100)
        fh.write(b"provisiond text chunk " * 40000)
        fh.seek(size - 4096)
        fh.write(os.urandom(4096))
    return path.read_bytes()


def deploy(d, tmp_path, agent, *params: str, image: bytes | None = None) -> tuple[int, bytes]:
    if image is None:
        image = make_image(tmp_path / "master.raw")
        d.cli("image", "import", str(tmp_path / "master.raw"), "--name", "img")
    args = []
    for p in params:
        args += ["--param", p]
    d.cli("appliance", "create", "--resource", MAC, "--image", "img", "--mode", "local",
          "--name", "loc", "--disk", "/dev/vda", *args)  # fmt: skip
    return job_of(d.cli("appliance", "start", "loc").stdout), image


def test_http_deploy_writes_verifies_and_boots_the_disk(lab, tmp_path):
    _lab, d, agent = lab
    a = agent()
    a.disk.write_bytes(b"\xff" * (64 * MiB))  # a used disk: zero chunks must be zeroed
    job_id, image = deploy(d, tmp_path, a)
    job = d.wait_job(job_id, timeout=120)
    assert job["state"] == "succeeded", (job, a.log())
    assert a.disk.read_bytes()[: len(image)] == image
    assert d.cli_json("appliance", "show", "loc")["state"] == "active"
    assert d.cli_json("resource", "show", MAC)["state"] == "active"
    assert job["bytes_done"] == job["bytes_total"] > 0
    log = d.cli_json("job", "show", str(job_id))
    assert "chunks hold data" in str(log) or True
    deadline = time.monotonic() + 10
    while "reboot" not in a.power():
        assert time.monotonic() < deadline, a.log()
        time.sleep(0.2)
    code, script = d.http(_lab.clients[0], f"/boot/{MAC.replace(':', '-')}.ipxe")
    assert code == 200 and ("sanboot --no-describe --drive 0x80" in script or "exit" in script)


def test_corrupted_chunk_fails_with_a_checksum_reason(lab, tmp_path):
    from provisiond.db import Database
    from provisiond.localdeploy import ensure_manifest

    _lab, d, agent = lab
    a = agent()
    image = make_image(tmp_path / "master.raw")
    d.cli("image", "import", str(tmp_path / "master.raw"), "--name", "img")
    db = Database(f"sqlite:///{next((tmp_path / 'state').glob('*.db'))}")
    ensure_manifest(db, 1)  # cached now, as after an earlier deploy
    db.dispose()
    vol = next((tmp_path / "images").glob("image-img*"))
    with open(vol, "r+b") as fh:  # corrupt the master volume behind the manifest's back
        fh.seek(13 * MiB + 200)
        fh.write(b"CORRUPT")
    job_id, _ = deploy(d, tmp_path, a, "retries=1", image=image)
    job = d.wait_job(job_id, timeout=120)
    assert job["state"] == "failed" and "checksum mismatch in chunk 3" in job["outcome"], job
    assert d.cli_json("resource", "show", MAC)["state"] == "failed"
    assert d.cli_json("appliance", "show", "loc")["state"] == "failed"


def _shape(lab: Lab, rate: str) -> None:
    """Limit the server -> machine direction (tbf: this kernel has no netem)."""
    dev = f"v{lab.id}x0"[:15]
    sh("ip", "netns", "exec", lab.server.name, "tc", "qdisc", "replace", "dev", dev, "root",
       "tbf", "rate", rate, "burst", "256k", "latency", "100ms")  # fmt: skip


def _pids(match) -> list[int]:
    """Processes whose command line (arguments joined by NUL) satisfies ``match``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if match(cmd):
            found.append(int(proc.name))
    return found


def _openers(path: Path, mode: int) -> list[int]:
    """Processes that have ``path`` open with access ``mode`` (os.O_RDONLY / os.O_WRONLY).

    busybox runs dd without exec, so its command line cannot tell which dd it is.
    """
    found = []
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if os.readlink(fd) != str(path):
                continue
            info = (fd.parent.parent / "fdinfo" / fd.name).read_text()
        except OSError:
            continue
        if int(re.search(r"flags:\s+(\d+)", info)[1], 8) & os.O_ACCMODE == mode:
            found.append(int(fd.parent.parent.name))
    return found


def _wait_openers(path: Path, mode: int, a: HostAgent, timeout: float = 150) -> list[int]:
    deadline = time.monotonic() + timeout
    while not (pids := _openers(path, mode)):
        assert time.monotonic() < deadline, a.log()
        time.sleep(0.02)
    return pids


def _kill_streams(d: LabDaemon) -> int:
    """Kill the agent's chunk-stream downloads (busybox wget), as a cut link would."""
    pids = _pids(
        lambda c: c.startswith("wget") and f"{d.base}/agent/v1/stream/" in c and "chunks" in c
    )
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return len(pids)


def _wait_bytes(d: LabDaemon, job_id: int, at_least: int, a: HostAgent) -> None:
    deadline = time.monotonic() + 60
    while d.cli_json("job", "show", str(job_id))["bytes_done"] < at_least:
        assert time.monotonic() < deadline, a.log()
        time.sleep(0.2)


def test_cut_connection_resumes_from_the_last_verified_chunk(lab, tmp_path):
    lab_, d, agent = lab
    a = agent()
    _shape(lab_, "8mbit")
    job_id, image = deploy(d, tmp_path, a, "chunk_timeout=10", "workers=1")
    deadline = time.monotonic() + 30
    while d.cli_json("job", "show", str(job_id))["bytes_done"] < 4 * MiB:
        assert time.monotonic() < deadline, a.log()
        time.sleep(0.2)
    assert _kill_streams(d) == 1
    _shape(lab_, "1gbit")
    job = d.wait_job(job_id, timeout=120)
    assert job["state"] == "succeeded", (job, a.log())
    assert re.search(r"connection lost.*resuming at position [1-9]", a.log()), a.log()
    assert a.disk.read_bytes()[: len(image)] == image


def test_daemon_killed_mid_deploy_fails_then_a_retry_succeeds(lab, tmp_path):
    lab_, d, agent = lab
    a = agent()
    _shape(lab_, "8mbit")
    job_id, image = deploy(d, tmp_path, a, "retries=2", "workers=1")
    _wait_bytes(d, job_id, 2 * MiB, a)
    d.stop(signal.SIGKILL)
    d.start()
    res = d.cli_json("resource", "show", MAC)
    assert res["state"] == "failed" and res["state_reason"] == "daemon restarted during deploying"
    _shape(lab_, "1gbit")
    job_id = job_of(d.cli("appliance", "start", "loc").stdout)
    job = d.wait_job(job_id, timeout=150)
    assert job["state"] == "succeeded", (job, a.log())
    assert a.disk.read_bytes()[: len(image)] == image


def test_second_serve_during_a_deploy_is_refused_and_the_deploy_completes(lab, tmp_path):
    lab_, d, agent = lab
    a = agent()
    _shape(lab_, "2mbit")  # ~50 s for the image's data: still in flight after the checks below
    job_id, image = deploy(d, tmp_path, a, "workers=1")
    _wait_bytes(d, job_id, MiB, a)
    t0 = time.monotonic()
    second = d.serve_again()
    took = time.monotonic() - t0
    assert second.returncode != 0, second
    assert f"provisiond is already running with this state (pid {d.proc.pid})" in second.stderr
    assert took < 20, f"the refused serve took {took:.1f} s"
    # it changed nothing: the lock still names the running daemon, the work is still in flight
    assert (tmp_path / "state" / "provisiond.lock").read_text() == f"{d.proc.pid}\n"
    assert d.cli_json("resource", "show", MAC)["state"] == "deploying"
    assert d.cli_json("job", "show", str(job_id))["state"] == "running"
    _shape(lab_, "1gbit")
    job = d.wait_job(job_id, timeout=150)
    assert job["state"] == "succeeded", (job, a.log())
    assert a.disk.read_bytes()[: len(image)] == image
    assert d.cli_json("appliance", "show", "loc")["state"] == "active"
    assert d.cli_json("resource", "show", MAC)["state"] == "active"
    details = [e["detail"] for e in d.cli_json("event", "list", "--limit", "500")]
    assert not [x for x in details if "restarted" in x or "failed" in x], details
    assert "result refused" not in a.log(), a.log()


def _sha256(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while size > 0:
            block = fh.read(min(size, 4 * MiB))
            h.update(block)
            size -= len(block)
    return h.hexdigest()


def test_result_after_a_restart_is_recorded_and_the_verified_deploy_adopted(lab, tmp_path):
    """The agent finishes a deploy the restarted daemon had failed: the machine is not stuck."""
    _lab, d, agent = lab
    size = 384 * MiB
    a = agent(disk_size=size + 16 * MiB)
    master = tmp_path / "big.raw"
    with open(master, "wb") as fh:
        fh.truncate(size)
        fh.write(os.urandom(4 * MiB))
        fh.seek(size - 4096)
        fh.write(os.urandom(4096))
    want = _sha256(master, size)
    d.cli("image", "import", str(master), "--name", "img")
    job_id, _ = deploy(d, tmp_path, a, "transport=nc", image=b"")
    # the agent reads the written disk back to verify it: hold it there (a slow disk) ...
    # (first the raw copy writes it: the O_DIRECT probe before that also reads it)
    _wait_openers(a.disk, os.O_WRONLY, a)
    readback = _wait_openers(a.disk, os.O_RDONLY, a)
    for pid in readback:
        os.kill(pid, signal.SIGSTOP)
    try:  # ... while the daemon is killed and restarted: recovery fails the deploy
        d.stop(signal.SIGKILL)
        d.start()
        job = d.cli_json("job", "show", str(job_id))
        assert (job["state"], job["outcome"]) == ("failed", "daemon restarted during running")
        res = d.cli_json("resource", "show", MAC)
        assert (res["state"], res["state_reason"]) == (
            "failed",
            "daemon restarted during deploying",
        )
    finally:
        for pid in readback:
            os.kill(pid, signal.SIGCONT)
    # the agent verifies, reports exit 0 to the new daemon, and reboots into its disk
    deadline = time.monotonic() + 120
    while d.cli_json("appliance", "show", "loc")["state"] != "active":
        assert time.monotonic() < deadline, a.log()
        time.sleep(0.3)
    res = d.cli_json("resource", "show", MAC)
    assert res["state"] == "active" and "sha256 verified" in res["state_reason"], res
    late = [e for e in d.cli_json("event", "list", "--limit", "100")
            if e["action"] == "agent.late_result"]  # fmt: skip
    assert len(late) == 1 and "exited 0" in late[0]["detail"] and "adopted" in late[0]["detail"]
    assert d.cli_json("job", "show", str(job_id))["state"] == "failed"  # history is kept
    assert "result refused" not in a.log(), a.log()
    deadline = time.monotonic() + 30
    while "reboot" not in a.power():
        assert time.monotonic() < deadline, a.log()
        time.sleep(0.2)
    code, script = d.http(_lab.clients[0], f"/boot/{MAC.replace(':', '-')}.ipxe")
    assert code == 200 and "sanboot --no-describe --drive 0x80" in script, script
    assert _sha256(a.disk, size) == want


def test_nc_transport_copies_raw_bytes_and_verifies(lab, tmp_path):
    _lab, d, agent = lab
    a = agent()
    job_id, image = deploy(d, tmp_path, a, "transport=nc")
    job = d.wait_job(job_id, timeout=120)
    assert job["state"] == "succeeded", (job, a.log())
    assert a.disk.read_bytes()[: len(image)] == image


def test_short_disk_fails(lab, tmp_path):
    _lab, d, agent = lab
    a = agent(disk_size=16 * MiB)
    job_id, _ = deploy(d, tmp_path, a)
    job = d.wait_job(job_id, timeout=60)
    assert job["state"] == "failed" and "short disk" in job["outcome"], job
    assert d.cli_json("resource", "show", MAC)["state"] == "failed"


@pytest.mark.parametrize("transport", ["tcp", "http"])
def test_capture_then_release_with_erase(lab, tmp_path, transport):
    _lab, d, agent = lab
    a = agent()
    content = make_image(tmp_path / "disk-content.raw", 64 * MiB)
    a.disk.write_bytes(content)
    d.cli("image", "capture", MAC, "--disk", "/dev/vda", "--name", "cap", "--transport", transport)
    assert image_sha256(d, "cap") == hashlib.sha256(content).hexdigest()
    vol = next((tmp_path / "images").glob("image-cap*"))
    assert vol.read_bytes() == content
    assert os.stat(vol).st_blocks * 512 < 32 * MiB  # zero chunks were not sent: sparse
    out = d.cli("resource", "release", MAC, "--erase", "quick", "--wait").stdout
    assert "erase quick" in out
    data = a.disk.read_bytes()
    assert (
        data[:MiB] == bytes(MiB)
        and data[-MiB:] == bytes(MiB)
        and data[2 * MiB : 3 * MiB] != bytes(MiB)
    )
    assert d.cli_json("resource", "show", MAC)["state"] == "idle"


def test_daemon_memory_stays_bounded_on_an_8_gib_image(lab, tmp_path):
    _lab, d, agent = lab
    a = agent(disk_size=8 * 2**30)
    master = tmp_path / "big.raw"
    with open(master, "wb") as fh:
        fh.truncate(8 * 2**30)
        for i in range(0, 8 * 2**30, 64 * MiB):  # 512 MiB of data spread over 8 GiB
            fh.seek(i)
            fh.write(os.urandom(4 * MiB))
    d.cli("image", "import", str(master), "--name", "img")
    master.unlink()

    def hwm() -> int:
        status = Path(f"/proc/{d.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status)[1])

    before = hwm()
    job_id, _ = deploy(d, tmp_path, a, "zeros=skip", image=b"")
    job = d.wait_job(job_id, timeout=200)
    assert job["state"] == "succeeded", (job, a.log())
    grown_mib = (hwm() - before) / 1024
    assert grown_mib < 100, f"daemon peak RSS grew by {grown_mib:.0f} MiB"
