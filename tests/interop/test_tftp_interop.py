"""Interop tests of the TFTP service on 127.0.0.1 (ephemeral port) with real
clients: atftp, tftp-hpa's tftp and tftpy, plus a raw-socket peer for the
bad inputs no well-behaved client sends."""

from __future__ import annotations

import hashlib
import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from provisiond import pxesettings
from provisiond.config import Config, ServicesConfig
from pxe.tftp.codec import Ack, Data, Error, OptionAck, parse
from pxe.tftp.server import TftpService, TftpStartError

pytestmark = pytest.mark.interop

IPXE = Path("/usr/lib/ipxe")
HOST = "127.0.0.1"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    for name in ("undionly.kpxe", "ipxe.efi"):
        if not (IPXE / name).exists():
            pytest.skip(reason=f"needs {IPXE / name} (apt-get install ipxe)")
    base = tmp_path_factory.mktemp("tftp")
    root = base / "boot"
    (root / "efi").mkdir(parents=True)
    shutil.copy(IPXE / "undionly.kpxe", root / "undionly.kpxe")
    shutil.copy(IPXE / "ipxe.efi", root / "ipxe.efi")  # follows the /boot symlink
    shutil.copy(IPXE / "ipxe.efi", root / "efi" / "ipxe.efi")
    (base / "secret").write_text("not for tftp clients\n")
    (root / "escape").symlink_to(base / "secret")
    (root / "rollover.bin").write_bytes(bytes(range(256)) * (8 * 65540 // 256 + 1))
    return root


@pytest.fixture(scope="module")
def server(assets):
    config = Config(boot_assets_dir=assets, services=ServicesConfig(tftp_port=0))
    svc = TftpService(pxesettings.tftp(config))
    svc.start()
    yield svc
    svc.stop()


def need(program: str) -> None:
    if not shutil.which(program):
        pytest.skip(reason=f"needs {program} (apt-get install atftp tftp-hpa)")


def atftp(server, remote: str, local: Path, *opts: str, trace: bool = False):
    need("atftp")
    cmd = ["atftp", "-g", "-r", remote, "-l", str(local)]
    for opt in opts:
        cmd += ["--option", opt]
    if trace:
        cmd.append("--trace")
    return subprocess.run(
        [*cmd, HOST, str(server.port)], capture_output=True, text=True, timeout=60
    )


# --------------------------------------------------------------------------- real clients

ATFTP_CASES = [
    ("undionly.kpxe", ()),
    ("undionly.kpxe", ("blksize 1428",)),
    ("ipxe.efi", ("blksize 1428", "windowsize 16")),
    ("efi/ipxe.efi", ("tsize 0", "windowsize 8")),
    ("/undionly.kpxe", ("blksize 65464", "windowsize 4")),
]


@pytest.mark.parametrize(("name", "opts"), ATFTP_CASES)
def test_atftp_fetch(server, assets, tmp_path, name, opts):
    out = tmp_path / "out"
    r = atftp(server, name, out, *opts, trace=True)
    assert r.returncode == 0, r.stderr
    assert sha(out) == sha(assets / name.lstrip("/"))
    if opts:  # every option was granted in the OACK (atftp --trace prints it)
        oack = (r.stdout + r.stderr).split("received OACK", 1)[1].splitlines()[0]
        for opt in opts:
            assert f"{opt.split()[0]}: " in oack, oack


def test_atftp_windowsize_with_block_rollover(server, assets, tmp_path):
    out = tmp_path / "out"
    r = atftp(server, "rollover.bin", out, "blksize 8", "windowsize 32")
    assert r.returncode == 0, r.stderr
    assert sha(out) == sha(assets / "rollover.bin")


def test_windowed_fetch_without_segmentation_offload(assets, tmp_path):
    # The one-sendmsg-per-DATA fallback used where the kernel refuses UDP_SEGMENT.
    config = Config(boot_assets_dir=assets, services=ServicesConfig(tftp_port=0))
    svc = TftpService(pxesettings.tftp(config), gso=False)
    svc.start()
    try:
        r = atftp(svc, "ipxe.efi", tmp_path / "out", "blksize 1428", "windowsize 16")
    finally:
        svc.stop()
    assert r.returncode == 0, r.stderr
    assert sha(tmp_path / "out") == sha(assets / "ipxe.efi")
    assert svc.stats["completed"] == 1 and not svc.gso


def test_windowed_fetch_uses_segmentation_offload(server, tmp_path):
    r = atftp(server, "ipxe.efi", tmp_path / "out", "windowsize 16")
    assert r.returncode == 0, r.stderr
    if not server.gso:
        pytest.skip(reason="this kernel refused UDP_SEGMENT; the fallback path served the file")


def test_tftp_hpa_fetch(server, assets, tmp_path):
    # tftp-hpa's client sends no RFC 2347 options (no blksize flag): plain RFC 1350.
    need("tftp")
    out = tmp_path / "out"
    cmd = ["tftp", "-m", "binary", HOST, str(server.port), "-c", "get", "undionly.kpxe", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert sha(out) == sha(assets / "undionly.kpxe")


def test_tftp_hpa_traversal_refused(server, tmp_path):
    need("tftp")
    out = tmp_path / "out"
    cmd = ["tftp", "-m", "binary", HOST, str(server.port), "-c", "get", "../etc/passwd", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert "access violation" in (r.stdout + r.stderr).lower()
    assert not out.exists() or out.stat().st_size == 0


@pytest.mark.parametrize("options", [{}, {"blksize": 1428}, {"blksize": 8192, "tsize": 0}])
def test_tftpy_fetch(server, assets, tmp_path, options):
    import tftpy

    logging.getLogger("tftpy").setLevel(logging.WARNING)
    out = tmp_path / "out"
    tftpy.TftpClient(HOST, server.port, options=dict(options)).download("ipxe.efi", str(out))
    assert sha(out) == sha(assets / "ipxe.efi")


@pytest.mark.parametrize("name", ["../etc/passwd", "/etc/passwd", "..\\..\\etc\\passwd", "escape"])
def test_atftp_traversal_fails(server, tmp_path, name):
    out = tmp_path / "out"
    r = atftp(server, name, out)
    assert r.returncode != 0
    assert not out.exists() or b"root:" not in out.read_bytes()


# --------------------------------------------------------------------------- raw peer


class Peer:
    """A raw UDP TFTP peer for inputs that real clients never send."""

    def __init__(self, server) -> None:
        self.server = (HOST, server.port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(3)

    def send(self, data: bytes, to=None) -> None:
        self.sock.sendto(data, to or self.server)

    def recv(self, timeout: float = 3.0):
        self.sock.settimeout(timeout)
        data, addr = self.sock.recvfrom(70000)
        return parse(data), addr

    def silent(self, wait: float = 0.5) -> bool:
        try:
            self.recv(wait)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def peer(server):
    p = Peer(server)
    yield p
    p.close()


def rrq(name: bytes, mode: bytes = b"octet", *opts: bytes) -> bytes:
    return b"\0\x01" + name + b"\0" + mode + b"\0" + b"".join(o + b"\0" for o in opts)


REFUSED = [
    # (datagram, expected ERROR code, stats key)
    (rrq(b"../etc/passwd"), 2, "refused_path"),
    (rrq(b"..\\..\\"), 2, "refused_path"),
    (rrq(b"escape"), 2, "refused_path"),
    (rrq(b"/etc/passwd"), 1, "not_found"),  # leading / stripped: <root>/etc/passwd
    (rrq(b"efi"), 2, "refused_path"),  # a directory
    (b"\0\x02upload.bin\0octet\0", 2, "wrq"),
    (rrq(b"undionly.kpxe", b"mail"), 4, "bad_mode"),
    (rrq(b"undionly.kpxe", b"binary"), 4, "bad_mode"),
    (b"\0\x01undionly.kpxe\0", 4, "dropped_malformed"),  # missing mode
    (b"\0\x01undionly.kp", 4, "dropped_malformed"),  # truncated RRQ
]


@pytest.mark.parametrize(("datagram", "code", "key"), REFUSED)
def test_refused_requests_get_an_error_and_are_counted(server, peer, datagram, code, key):
    before = server.stats[key]
    peer.send(datagram)
    packet, _ = peer.recv()
    assert isinstance(packet, Error) and packet.code == code
    assert server.stats[key] == before + 1


@pytest.mark.parametrize(
    "datagram", [b"\0\x05\0", b"\0", b"\xff\xff garbage", b"\0\x04\0\x01", b"\0\x03\0\x01x"]
)
def test_garbage_is_dropped_counted_and_serving_goes_on(server, peer, assets, tmp_path, datagram):
    before = server.stats["dropped_malformed"]
    peer.send(datagram)
    assert peer.silent()
    assert server.stats["dropped_malformed"] == before + 1
    r = atftp(server, "undionly.kpxe", tmp_path / "out")
    assert r.returncode == 0 and sha(tmp_path / "out") == sha(assets / "undionly.kpxe")


@pytest.mark.parametrize(
    "opts",
    [(b"blksize", b"0"), (b"blksize", b"1"), (b"blksize", b"65536"), (b"timeout", b"99999")],
)
def test_invalid_options_are_ignored(peer, opts):
    peer.send(rrq(b"undionly.kpxe", b"octet", *opts))
    packet, _ = peer.recv()  # no OACK: plain DATA 1 with the default block size
    assert isinstance(packet, Data) and packet.block == 1 and len(packet.payload) == 512


def test_oack_then_windowed_data(peer, assets):
    peer.send(rrq(b"undionly.kpxe", b"octet", b"tsize", b"0", b"blksize", b"1024"))
    oack, tid = peer.recv()
    size = (assets / "undionly.kpxe").stat().st_size
    assert oack == OptionAck((("tsize", str(size)), ("blksize", "1024")))
    peer.send(Ack(0).pack(), tid)
    data, _ = peer.recv()
    assert data.block == 1 and len(data.payload) == 1024


def test_wrong_tid_gets_error_5_and_transfer_goes_on(server, peer):
    peer.send(rrq(b"undionly.kpxe"))
    first, tid = peer.recv()
    intruder = Peer(server)
    try:
        before = server.stats["wrong_tid"]
        intruder.send(Ack(1).pack(), tid)
        err, _ = intruder.recv()
        assert err == Error(5, "unknown transfer ID")
        assert server.stats["wrong_tid"] == before + 1
    finally:
        intruder.close()
    assert peer.silent(0.3)  # the intruder's ACK did not advance our transfer
    peer.send(Ack(1).pack(), tid)
    second, _ = peer.recv()
    assert first.block == 1 and second.block == 2


@pytest.fixture
def quiet_server(assets):
    """A server of its own, so no other test's transfer touches its counters."""
    svc = TftpService(
        pxesettings.tftp(Config(boot_assets_dir=assets, services=ServicesConfig(tftp_port=0)))
    )
    svc.start()
    yield svc
    svc.stop()


def test_duplicate_ack_does_not_double_send_and_timeout_retransmits(quiet_server):
    server, peer = quiet_server, Peer(quiet_server)
    before = server.stats["retransmits"]
    peer.send(rrq(b"undionly.kpxe", b"octet", b"timeout", b"1"))
    oack, tid = peer.recv()
    assert oack == OptionAck((("timeout", "1"),))
    peer.send(Ack(0).pack(), tid)
    assert peer.recv()[0].block == 1
    peer.send(Ack(1).pack(), tid)
    peer.send(Ack(1).pack(), tid)  # duplicate: must not cause a second DATA 2 now
    assert peer.recv()[0].block == 2
    got_first = time.monotonic()
    again, _ = peer.recv(5)  # the next DATA 2 is the timer's (1 s), not the duplicate's
    assert again.block == 2 and time.monotonic() - got_first > 0.5
    assert server.stats["retransmits"] == before + 1
    peer.close()


def test_client_error_ends_transfer(server, peer):
    before = server.stats["client_errors"]
    peer.send(rrq(b"undionly.kpxe"))
    _, tid = peer.recv()
    peer.send(Error(0, "changed my mind").pack(), tid)
    assert peer.silent(1.5)
    assert server.stats["client_errors"] == before + 1


# --------------------------------------------------------------------------- lifecycle


def test_port_in_use_is_a_clear_start_error(server, assets):
    config = Config(boot_assets_dir=assets, services=ServicesConfig(tftp_port=server.port))
    with pytest.raises(TftpStartError, match="in use"):
        TftpService(pxesettings.tftp(config)).start()


def test_fifty_concurrent_atftp_clients(server, assets, tmp_path):
    need("atftp")
    procs = []
    for i in range(50):
        cmd = ["atftp", "-g", "-r", "ipxe.efi", "-l", str(tmp_path / f"o{i}")]
        cmd += ["--option", "blksize 1428", "--option", "windowsize 16", HOST, str(server.port)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    assert all(p.wait(timeout=120) == 0 for p in procs)
    want = sha(assets / "ipxe.efi")
    assert all(sha(tmp_path / f"o{i}") == want for i in range(50))


def test_stop_is_prompt(assets):
    svc = TftpService(
        pxesettings.tftp(Config(boot_assets_dir=assets, services=ServicesConfig(tftp_port=0)))
    )
    svc.start()
    p = Peer(svc)
    p.send(rrq(b"ipxe.efi"))  # leave a transfer hanging
    p.recv()
    started = time.monotonic()
    svc.stop()
    assert time.monotonic() - started < 2.0
    p.close()
