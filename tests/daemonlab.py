"""``provisiond serve`` inside a private network namespace, for interop tests.

Owns starting the real daemon (``nsenter --net``) in a tests/netlab.py Lab
with a config written for that lab, and the small helpers tests need: the
CLI as a subprocess, HTTP requests from the lab's client namespace with
curl, a PXE boot's DHCP exchange with busybox udhcpc (the only way to a
per-boot agent token), an agent registration through the real agent API,
stop and kill -9.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from provisiond import config as configmod
from provisiond.db import Database
from provisiond.model import Kernel
from storage.exporters.identity import owner_pid
from tests.conftest import write_config
from tests.netlab import Lab, Netns

PROVISIOND = str(Path(sys.executable).with_name("provisiond"))
PXE_VENDOR = "PXEClient:Arch:00000:UNDI:002001"  # what a BIOS PXE ROM sends (option 60)
# udhcpc's script: add the leased address beside any static one, and print it
BOOT_SCRIPT = """#!/bin/sh
[ "$1" = bound ] || exit 0
ip addr add "$ip/${mask:-24}" dev "$interface" 2>/dev/null
echo "BOUND ip=$ip"
"""
HOSTKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDk7nSx0ucIm2yZ0FuvAOZSnD0LNZ7v1zJ6Ju2Kb2W5X agent"


_handed_out: set[int] = set()


def free_control_port() -> int:
    """A tgt control port (1-1000) whose lock no tgtd holds, not handed out before here.

    The default of every lab daemon, so test daemons never share a tgtd (nor
    meet the system's on port 0): provisiond refuses a tgtd that is not its own.
    """
    start = random.randrange(1000)
    for i in range(1000):
        port = (start + i) % 1000 + 1
        if port not in _handed_out and owner_pid(port) is None:
            _handed_out.add(port)
            return port
    raise AssertionError("no free tgt control port in 1-1000 (stale tgtd processes?)")


def lab_config(
    lab: Lab,
    state: Path,
    extra: str = "",
    tgt_control_port: int | None = None,
    iscsi: str = "",  # more [iscsi] lines, e.g. "boot_settle = 3\n"
) -> str:
    if tgt_control_port is None:
        tgt_control_port = free_control_port()
    return f"""
interface = "br0"
address = "{lab.server_ip}"
http_port = 8080
state_dir = "{state}"
[dns]
domain = "lab.test"
[iscsi]
tgt_control_port = {tgt_control_port}
{iscsi}[[subnet]]
cidr = "{lab.cidr}"
range = ["{lab.net}.100", "{lab.net}.120"]
router = "{lab.server_ip}"
dns = ["{lab.server_ip}"]
{extra}
"""


class LabDaemon:
    def __init__(self, lab: Lab, workdir: Path, config_text: str,
                 provisiond: str = PROVISIOND) -> None:  # fmt: skip
        self.lab, self.workdir = lab, workdir
        self.provisiond = provisiond  # the console script to run (a wheel test's own venv)
        self.cfg = workdir / "provisiond.toml"
        self.cfg.write_text(config_text)
        self.log = workdir / "daemon.log"
        self.proc: subprocess.Popen | None = None
        self.base = f"http://{lab.server_ip}:8080"
        self.agent_base = f"http://{lab.server_ip}:8090"  # agent_port default: http_port + 10

    def url(self, path: str) -> str:
        """The daemon URL serving ``path``: agent control calls use the agent channel."""
        control = path.startswith("/agent/v1/") and not path.startswith("/agent/v1/stream/")
        return (self.agent_base if control else self.base) + path

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run([self.provisiond, "--config", str(self.cfg), *args],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        if check and res.returncode != 0:
            raise AssertionError(f"provisiond {' '.join(args)}: {res.stdout}{res.stderr}")
        return res

    def cli_json(self, *args: str):
        return json.loads(self.cli(*args, "--json").stdout)

    def start(self) -> None:
        mark = self.log.read_text().count("started:") if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.proc = self.lab.server.popen(
                [self.provisiond, "--config", str(self.cfg), "serve"], stdout=log, stderr=log
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("daemon exited:\n" + self.log.read_text())
            if self.log.read_text().count("started:") > mark:
                return
            time.sleep(0.1)
        raise AssertionError("daemon did not start:\n" + self.log.read_text())

    def serve_again(self, timeout: float = 60) -> subprocess.CompletedProcess:
        """A second ``serve`` of this config beside the running one; returns once it exits."""
        return self.lab.server.run([self.provisiond, "--config", str(self.cfg), "serve"],
                                   check=False, timeout=timeout)  # fmt: skip

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def http(self, client: Netns, path: str, method: str = "GET", data: str | None = None,
             headers: dict[str, str] | None = None,
             source: str | None = None) -> tuple[int, str]:  # fmt: skip
        cmd = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-X", method]
        if source:
            cmd += ["--interface", source]
        for k, v in (headers or {}).items():
            cmd += ["-H", f"{k}: {v}"]
        if data is not None:
            cmd += ["--data-binary", data]
        out = client.run([*cmd, self.url(path)]).stdout
        body, _, code = out.rpartition("\n")
        return int(code), body

    def add_fake_kernel(self) -> None:
        """A default kernel so boot scripts carry an agent token (no VM boots it)."""
        k = self.workdir / "fake-vmlinuz"
        k.write_bytes(b"not a kernel")
        self.cli("kernel", "add", "fake", "--kernel", str(k), "--initrd", str(k), "--default")

    def dhcp_boot(self, client: Netns, vendor: str = PXE_VENDOR) -> str:
        """A PXE ROM's DHCP exchange from ``client`` (busybox udhcpc); the leased address."""
        script = self.workdir / "udhcpc-boot.sh"
        script.write_text(BOOT_SCRIPT)
        script.chmod(0o755)
        r = client.run(["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5",
                        "-T", "2", "-V", vendor, "-s", str(script)],
                       check=False, timeout=60)  # fmt: skip
        line = next((x for x in r.stdout.splitlines() if x.startswith("BOUND ip=")), "")
        assert line, f"udhcpc got no lease: {r.stdout}{r.stderr}"
        return line.split("=", 1)[1].strip()

    def boot_script(self, client: Netns, mac: str, source: str | None = None) -> tuple[int, str]:
        return self.http(client, f"/boot/{mac.replace(':', '-')}.ipxe", source=source)

    def boot_token(self, client: Netns, mac: str) -> str:
        """The legitimate way: a DHCP boot, then the script from the leased address."""
        ip = self.dhcp_boot(client)
        code, text = self.boot_script(client, mac, source=ip)
        assert code == 200, text
        m = re.search(r"provisiond\.token=(\S+)", text)
        assert m, text
        return m.group(1)

    def register(self, client: Netns, mac: str, ip: str, hostkey: str = HOSTKEY) -> str:
        """Make ``mac`` an idle resource through the real boot + agent API."""
        token = self.boot_token(client, mac)
        body = {"mac": mac, "ip": ip, "hostkey": hostkey,
                "inventory": {"cpu": {"count": 1}, "nics": [{"mac": mac}]}}  # fmt: skip
        code, text = self.http(client, "/agent/v1/register", "POST", json.dumps(body),
                               {"Authorization": f"Bearer {token}",
                                "Content-Type": "application/json"})  # fmt: skip
        assert code == 200, text
        return token

    def wait_job(self, job_id: int, states=("succeeded", "failed"), timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.cli_json("job", "show", str(job_id))
            if job["state"] in states:
                return job
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} not in {states}: {job}")


class Daemon:
    def __init__(self, cfg_path: Path) -> None:
        self.cfg_path = cfg_path
        self.cfg = configmod.load(cfg_path)
        self.base = self.cfg.http_base
        self.agent_base = self.cfg.agent_base
        self.proc: subprocess.Popen | None = None
        self.log = cfg_path.parent / "daemon.log"

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([PROVISIOND, "--config", str(self.cfg_path), *args],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [PROVISIOND, "--config", str(self.cfg_path), "serve"], stdout=log, stderr=log
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("daemon did not answer /healthz:\n" + self.log.read_text())

    def stop(self, sig=signal.SIGTERM) -> float:
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(10)
        return time.monotonic() - t0

    def request(self, method: str, path: str, body=None, token=None, headers=None):
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        control = path.startswith("/agent/v1/") and not path.startswith("/agent/v1/stream/")
        base = self.agent_base if control else self.base
        req = urllib.request.Request(base + path, data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        if isinstance(body, dict):
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=40) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def get(self, path, token=None):
        return self.request("GET", path, token=token)


@pytest.fixture
def daemon(tmp_path):
    cfg = write_config(tmp_path, agent={"heartbeat_interval": 1, "heartbeat_timeout": 8})
    d = Daemon(cfg)
    assert d.cli("init").returncode == 0
    yield d
    if d.proc and d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait()
    log = d.log.read_text() if d.log.exists() else ""
    assert "provisiond.token=" not in log.replace("provisiond.token=***", "")


def _register_kernel(d: Daemon) -> None:
    db = Database(d.cfg.database_url)
    with db.transaction() as s:
        s.add(Kernel(name="agent", kernel_path="kernels/agent/vmlinuz",
                     initrd_path="kernels/agent/initrd.img", is_default=True))  # fmt: skip
    db.dispose()


def _enroll(d: Daemon, mac: str) -> str:
    """An agent token the operator's way (no DHCP on loopback: scripts carry no token)."""
    out = d.cli("resource", "enroll", mac, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["token"]
