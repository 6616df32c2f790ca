"""Images onto a storage host over real SSH: every chunk verified on the host (storage.remotewrite).

The "storage host" is this machine behind a real SSH server: dropbear on
127.0.0.1 in its own mount namespace (root's home there is a temporary
directory holding the test's authorized key, so this machine's own keys are
never touched), reached by :class:`storage.ssh.SshRunner` with the host key
pinned. Import streams a file whose chunks are checked on the host, zero
chunks zero stale bytes (a classic LV keeps an earlier volume's data); a
chunk whose sha256 does not match is refused there and nothing of it is
written; a capture's receiver (provisiond.capturerx) fed by agent lanes over
TCP writes through the host; the runner's log and errors never hold a secret.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from provisiond import capturerx, chunks, imagedigest
from storage import remotewrite
from storage.backends.base import StorageError
from storage.runner import CommandFailed, Secret
from storage.ssh import SshRunner, SshTarget
from tests.sshlab import host_keys, need_tools

pytestmark = pytest.mark.interop
CS = 1 << 20  # chunk size for these tests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    need_tools()
    work = tmp_path_factory.mktemp("sshhost")
    keys = host_keys(work)
    home, client, hostkey, host_key = keys.home, keys.client, keys.hostkey, keys.host_key
    port = free_port()
    with open(work / "dropbear.log", "wb") as errlog:
        proc = subprocess.Popen(
            ["unshare", "-m", "sh", "-c", f'mount --bind "{home}" /root && exec dropbear -F -E '
             f'-s -p 127.0.0.1:{port} -r "{hostkey}" -P "{work}/dropbear.pid"'],
            stdout=subprocess.DEVNULL, stderr=errlog,
        )  # fmt: skip
    runner = SshRunner(SshTarget("127.0.0.1", client, port=port, host_key=host_key))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                runner.run(["true"], timeout=10)
                break
            except StorageError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail((work / "dropbear.log").read_text())
                time.sleep(0.2)
        yield runner
    finally:
        runner.close()
        proc.terminate()
        proc.wait(10)


def image(tmp_path: Path, n: int, tail: int, zero: set[int]) -> Path:
    """``n`` chunks (the last ``tail`` bytes short), the chunks in ``zero`` all zero."""
    rnd = os.urandom(n * CS)
    data = bytearray(rnd[: n * CS - tail])
    for i in zero:
        data[i * CS : (i + 1) * CS] = bytes(len(data[i * CS : (i + 1) * CS]))
    path = tmp_path / "image.raw"
    path.write_bytes(data)
    return path


def stale(path: Path, size: int) -> Path:
    """A "volume" holding an earlier owner's bytes (0x5a), as a classic LV can."""
    path.write_bytes(b"\x5a" * size)
    return path


@pytest.mark.parametrize("n, tail, zero", [(5, 0, {1, 3}), (3, 4096 + 7, {2}), (1, 0, set())])
def test_import_verifies_every_chunk_on_the_host_and_zeroes_stale_bytes(host, tmp_path, n, tail,
                                                                       zero):  # fmt: skip
    src = image(tmp_path, n, tail, zero)
    size = src.stat().st_size
    dst = stale(tmp_path / "volume", size)
    seen = []
    got = remotewrite.upload(host, str(src), str(dst), size, lambda d, t: seen.append((d, t)),
                             chunk=CS)  # fmt: skip
    assert got == hashlib.sha256(src.read_bytes()).hexdigest()
    assert dst.read_bytes() == src.read_bytes()
    assert seen[-1] == (size, size) and len(seen) == n


def test_a_chunk_whose_sha256_differs_is_refused_on_the_host(host, tmp_path):
    dst = stale(tmp_path / "volume", 3 * CS)
    w = remotewrite.RemoteWriter(host, str(dst))
    try:
        w.write(0, b"\x01" * CS)
        with pytest.raises(StorageError, match=f"chunk at offset {CS}: sha256 .* here, 00+ sent"):
            w.write(CS, b"\x02" * CS, sha256="0" * 64)
            w.finish()
    finally:
        w.close()
    body = dst.read_bytes()
    assert body[:CS] == b"\x01" * CS and body[CS:] == b"\x5a" * 2 * CS  # the bad chunk: not written


def test_a_volume_that_cannot_be_opened_is_named(host, tmp_path):
    with pytest.raises(
        StorageError, match=r"127\.0\.0\.1:/nonexistent/vol failed: ERR cannot open .*No such file"
    ):
        w = remotewrite.RemoteWriter(host, "/nonexistent/vol")
        try:
            w.write(0, b"x" * 10)
            w.finish()
        finally:
            w.close()


def agent_lane(port: int, token: str, lane: int, lanes: int, img: bytes, idx: list[int]) -> str:
    """What the agent's ``nc`` sends on one lane (capturerx's wire format); the server's answer."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"P {token} {lane} {lanes}\n".encode())
        for i in idx:
            body = img[i * CS : (i + 1) * CS]
            s.sendall(f"C {i} r {len(body)} {chunks.sha256(body)}\n".encode() + body)
        s.sendall(f"E {len(idx)}\n".encode())
        s.shutdown(socket.SHUT_WR)
        return s.makefile().readline().strip()


def test_capture_receiver_writes_through_the_storage_host(host, tmp_path):
    """Two agent lanes over TCP; each chunk checked by the receiver, then again on the host."""
    import threading

    src = image(tmp_path, 6, 100, {2, 4})
    img = src.read_bytes()
    dst = stale(tmp_path / "volume", len(img))
    sink = remotewrite.RemoteWriter(host, str(dst))
    rx = capturerx.Receiver("127.0.0.1", str(dst), len(img), "127.0.0.1", lambda t: t == "tok",
                            chunk_size=CS, sink=sink).start()  # fmt: skip
    try:
        data = [i for i in range(6) if i not in (2, 4)]
        answers: list[str] = []
        lanes = [threading.Thread(target=lambda w=w: answers.append(
            agent_lane(rx.port, "tok", w, 2, img, data[w::2]))) for w in range(2)]  # fmt: skip
        for t in lanes:
            t.start()
        for t in lanes:
            t.join(30)
        assert sorted(answers) == ["OK 2", "OK 2"]
        m = rx.manifest()
        rx.finish()
    finally:
        rx.stop()
    assert len(m.chunks) == 4 and not m.sha256  # the receiver leaves the whole sha256 to ...
    # ... provisiond.imagedigest, which hashes the volume where it lives: on the storage host
    assert imagedigest.remote_hasher(host)(str(dst), len(img)) == hashlib.sha256(img).hexdigest()
    assert dst.read_bytes() == img  # the zero chunks overwrote the stale bytes there


def test_runner_never_logs_or_raises_a_secret(host, caplog):
    caplog.set_level(logging.DEBUG, logger="provisiond.storage")
    secret = "NeverLogThis0016"
    out = host.run(["sh", "-c", 'cat; echo " $0"', Secret(secret)], input="from stdin")
    assert out.stdout == f"from stdin {secret}\n"
    with pytest.raises(CommandFailed) as err:
        host.run(["sh", "-c", 'echo "bad password $0" >&2; exit 3', Secret(secret)])
    assert err.value.rc == 3 and secret not in str(err.value) and "***" in str(err.value)
    assert caplog.records and secret not in caplog.text
