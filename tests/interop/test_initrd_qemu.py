"""Boot the built initrd in QEMU (TCG) against a test agent-API peer.

Owns: the end-to-end check of initrd/build.sh, /init and the agent in a real
guest kernel. QEMU user networking (slirp) lets the guest reach the host's
loopback peer at 10.0.2.2 and forwards one loopback port to the guest's
sshd; no real interface is touched. Checks: the console markers, register
with the right token and an inventory that matches QEMU's -m/-smp/-drive/MAC,
a ``run`` command, heartbeats, an SSH login with the server's key and the
registered host key, and ``poweroff`` ending the VM.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agentlab import AgentApiPeer
from tests.initrdlab import BUILD_SH, newest_kernel

pytestmark = [pytest.mark.interop, pytest.mark.timeout(240)]

QEMU = shutil.which("qemu-system-x86_64")
MAC = "52:54:00:12:34:56"
DECOY_MAC = "52:54:00:12:34:57"
TOKEN = "qemu-test-token-8d1f"
DISK_BYTES = 64 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    kver = newest_kernel()
    if QEMU is None:
        pytest.skip(reason="qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
    if kver is None:
        pytest.skip(reason="no kernel with modules in /lib/modules and /boot (linux-image-amd64)")
    out = tmp_path_factory.mktemp("initrd")
    subprocess.run([str(BUILD_SH), "--kernel", kver, "--out", str(out)], check=True)
    return out


@pytest.fixture
def ssh_key():
    paramiko = pytest.importorskip("paramiko")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(pem))
    return pkey, f"{pkey.get_name()} {pkey.get_base64()} provisiond-test\n"


@pytest.fixture
def peer(ssh_key) -> Iterator[AgentApiPeer]:
    p = AgentApiPeer(token=TOKEN, authorized_keys=ssh_key[1])
    p.register_answer = {"resource": 1, "heartbeat_interval": 2}
    p.start()
    yield p
    p.stop()


def boot(built: Path, peer: AgentApiPeer, tmp_path: Path, ssh_port: int) -> subprocess.Popen:
    disk = tmp_path / "disk.raw"
    with disk.open("wb") as f:
        f.truncate(DISK_BYTES)
    append = (
        "console=ttyS0,115200 quiet panic=-1 "
        f"provisiond.url=http://10.0.2.2:{peer.port} provisiond.token={TOKEN} "
        "BOOTIF=01-52-54-00-12-34-56"
    )
    cmd = [
        QEMU, "-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "2",
        "-nographic", "-no-reboot", "-kernel", str(built / "vmlinuz"),
        "-initrd", str(built / "initrd.img"), "-append", append,
        # A decoy virtio NIC becomes eth0; BOOTIF names the e1000 one (eth1).
        "-netdev", "user,id=n0",
        "-device", f"virtio-net-pci,netdev=n0,mac={DECOY_MAC}",
        "-netdev", f"user,id=n1,hostfwd=tcp:127.0.0.1:{ssh_port}-:22",
        "-device", f"e1000,netdev=n1,mac={MAC}",
        "-drive", f"file={disk},format=raw,if=none,id=d0,cache=unsafe",
        "-device", "virtio-blk-pci,drive=d0,serial=PVD-TEST-1",
    ]  # fmt: skip
    console = (tmp_path / "console.log").open("wb")
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=console, stderr=console)


def ssh_run(port: int, pkey, hostkey_line: str, command: str) -> bytes:
    import paramiko

    client = paramiko.SSHClient()
    kind, b64 = hostkey_line.split()[:2]
    client.get_host_keys().add(
        f"[127.0.0.1]:{port}", kind, paramiko.Ed25519Key(data=b64decode(b64))
    )
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect("127.0.0.1", port, username="root", pkey=pkey, timeout=20,
                       allow_agent=False, look_for_keys=False)  # fmt: skip
        _, stdout, _ = client.exec_command(command, timeout=20)
        return stdout.read()
    finally:
        client.close()


def b64decode(text: str) -> bytes:
    import base64

    return base64.b64decode(text)


def test_idle_agent_boots_registers_and_obeys(built, peer, ssh_key, tmp_path):
    kver = newest_kernel()
    ssh_port = free_port()
    t0 = time.monotonic()
    vm = boot(built, peer, tmp_path, ssh_port)
    try:
        peer.wait_for(lambda: peer.of("/register") or vm.poll() is not None, 120)
        assert vm.poll() is None, (tmp_path / "console.log").read_text(errors="replace")
        reg = peer.of("/register")[0]
        registered_after = time.monotonic() - t0
        assert reg.headers["Authorization"] == f"Bearer {TOKEN}"
        body = json.loads(reg.body)
        assert (body["mac"], body["ip"]) == (MAC, "10.0.2.15")
        assert body["hostkey"].startswith("ssh-ed25519 AAAA")
        inv = body["inventory"]
        assert inv["cpu"]["count"] == 2
        assert 400 * 2**20 < inv["memory_bytes"] <= 512 * 2**20
        assert inv["disks"] == [
            {"name": "vda", "size_bytes": DISK_BYTES, "model": "", "serial": "PVD-TEST-1",
             "rotational": True}
        ]  # fmt: skip
        nics = [(n["name"], n["mac"], n["driver"], n["link"]) for n in inv["nics"]]
        # Only the boot NIC is brought up; a NIC that is down reports no link.
        assert nics == [("eth0", DECOY_MAC, "virtio_net", False), ("eth1", MAC, "e1000", True)]
        assert inv["nics"][1]["speed_mbps"] == 1000
        assert inv["dmi"]["vendor"] == "QEMU"
        assert (inv["firmware"], inv["kernel"]) == ("bios", kver)

        cid = peer.queue("run", "uname -r")
        assert peer.wait_for(lambda: peer.results.get(cid), 60) == (0, f"{kver}\n".encode())
        peer.wait_for(lambda: len(peer.of("/heartbeat")) >= 2, 30)

        out = ssh_run(ssh_port, ssh_key[0], body["hostkey"], "id -u; cat /run/provisiond/interval")
        assert out == b"0\n2\n"

        off = peer.queue("poweroff")
        assert peer.wait_for(lambda: peer.results.get(off), 60) == (0, b"powering off\n")
        assert vm.wait(timeout=60) == 0
    finally:
        if vm.poll() is None:
            vm.kill()
            vm.wait()
    console = (tmp_path / "console.log").read_text(errors="replace")
    assert f"PROVISIOND-NET-UP iface=eth1 mac={MAC} ip=10.0.2.15" in console
    assert f"PROVISIOND-AGENT-UP mac={MAC} ip=10.0.2.15" in console
    assert "PROVISIOND-SSH-UP port=22" in console
    assert TOKEN not in console
    print(f"registered {registered_after:.1f} s after QEMU start")
