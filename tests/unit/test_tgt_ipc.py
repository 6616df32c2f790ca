"""storage.exporters.tgt_ipc: tgtd's account request, byte for byte, through a real socket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest

from storage.backends import StorageError
from storage.exporters import tgt_ipc

SECRET = "Secr3tSecr3tAB"


def test_request_layout_is_tgtadm_req():
    req = tgt_ipc.account_request("host05", SECRET)
    body = f"user=host05,password={SECRET}".encode() + b"\0"
    assert tgt_ipc.HEADER.size == 120 and req[120:] == body
    mode, op, lld, length, tid, sid, lun, *rest = tgt_ipc.HEADER.unpack(req[:120])
    assert (mode, op, lld.rstrip(b"\0"), length, tid, sid) == (7, 0, b"iscsi", len(req), -1, 0)
    assert lun == 2**64 - 1 and rest == [0] * 6


@pytest.mark.parametrize("user, secret", [("a,b", SECRET), ("host05", "Secr3t,Secr3tAB"),
                                          ("h", "Secr3t\nSecr3tAB"), ("", SECRET)])  # fmt: skip
def test_what_tgtd_would_misparse_is_refused(user, secret):
    with pytest.raises(StorageError, match="without ','"):
        tgt_ipc.account_request(user, secret)


def serve_once(path: str, answer: bytes) -> tuple[threading.Thread, list[bytes]]:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    got: list[bytes] = []

    def run() -> None:
        conn, _ = srv.accept()
        with conn:
            data = b""
            while len(data) < 120 or len(data) < int.from_bytes(data[72:76], "little"):
                data += conn.recv(4096)
            got.append(data)
            conn.sendall(answer)
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, got


@pytest.mark.parametrize("err, rc, says", [(0, 0, ""), (14, 1, "tgtd error 14 (user_exist)")])
def test_script_sends_the_request_and_reads_the_answer(tmp_path, err, rc, says):
    t, got = serve_once(
        str(tmp_path / "socket.9"), err.to_bytes(4, "little") + (8).to_bytes(4, "little")
    )
    env = {**os.environ, "TGT_IPC_SOCKET": str(tmp_path / "socket")}
    run = subprocess.run([sys.executable, "-c", tgt_ipc.SCRIPT, "9"], input=f"host05\n{SECRET}\n",
                         capture_output=True, text=True, timeout=30, env=env)  # fmt: skip
    t.join(5)
    assert got == [tgt_ipc.account_request("host05", SECRET)]
    assert run.returncode == rc and tgt_ipc.explain(run.stderr) == says


def test_script_without_tgtd_says_so(tmp_path):
    run = subprocess.run([sys.executable, "-c", tgt_ipc.SCRIPT, "9"], input=f"u\n{SECRET}\n",
                         capture_output=True, text=True, timeout=30,
                         env={**os.environ, "TGT_IPC_SOCKET": str(tmp_path / "none")})  # fmt: skip
    assert run.returncode == 1 and "tgtd control port 9" in run.stderr
    assert SECRET not in run.stderr
