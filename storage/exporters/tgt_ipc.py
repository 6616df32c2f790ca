"""A CHAP account for tgt without the secret on any command line: tgtd's management IPC.

Owns creating tgt's incoming CHAP accounts. ``tgtadm --op new --mode account
--password SECRET`` puts the secret in tgtadm's argv, which every user of the
machine running it sees in ``ps`` (on a storage host: everyone logged in
there). tgtadm only packs its options into one request on tgtd's Unix socket
``/var/run/tgtd/socket.<control port>`` (tgt's ``usr/tgtadm.h``: a 120-byte
``struct tgtadm_req`` then ``user=U,password=P\\0``; the answer is ``struct
tgtadm_rsp {u32 err; u32 len}``), so :data:`SCRIPT` sends that request
itself (like tgtadm, ``TGT_IPC_SOCKET`` replaces the socket path's
prefix). It runs as ``python3 -c SCRIPT CONTROL_PORT`` through the exporter's
Runner, here or on a storage host over SSH, and reads the user and the
secret from stdin: neither argv nor a log holds the secret.

:func:`account_request` is the same encoding as a pure function (the unit
tests hold the script to it); :data:`ERRORS` names tgtd's error codes.
"""

from __future__ import annotations

import struct

from storage.backends.base import StorageError

HEADER = struct.Struct("<ii64sIiQQIIIIII")  # struct tgtadm_req (x86-64 layout, no padding)
MODE_ACCOUNT, OP_NEW = 7, 0
ERRORS = [
    "success",
    "unknown",
    "nomem",
    "no_driver",
    "no_target",
    "no_lun",
    "no_session",
    "no_connection",
    "no_binding",
    "target_exist",
    "lun_exist",
    "binding_exist",
    "acl_exist",
    "acl_noexist",
    "user_exist",
    "no_user",
    "too_many_user",
    "invalid_request",
    "outaccount_exist",
    "target_active",
    "lun_active",
    "driver_active",
    "unsupported_operation",
    "unknown_param",
    "prevent_removal",
]


def account_request(user: str, secret: str) -> bytes:
    """The request ``tgtadm --lld iscsi --op new --mode account --user U --password P`` sends."""
    for what, value in (("CHAP user", user), ("CHAP secret", secret)):
        if not value or any(c in value for c in ",\n\0") or not value.isprintable():
            raise StorageError(f"tgt: {what} must be printable, without ',' (tgtd splits on it)")
    body = f"user={user},password={secret}".encode() + b"\0"
    head = HEADER.pack(MODE_ACCOUNT, OP_NEW, b"iscsi", HEADER.size + len(body), -1, 0,
                       2**64 - 1, 0, 0, 0, 0, 0, 0)  # fmt: skip
    return head + body


#: ``python3 -c SCRIPT PORT`` with "USER\nSECRET\n" on stdin; exit 0, or 1 and the reason
SCRIPT = r"""
import os, socket, struct, sys
user, secret = sys.stdin.read().split("\n")[:2]
body = ("user=%s,password=%s" % (user, secret)).encode() + b"\0"
head = struct.pack("<ii64sIiQQIIIIII", 7, 0, b"iscsi", 120 + len(body), -1, 0,
                   2**64 - 1, 0, 0, 0, 0, 0, 0)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect("%s.%d" % (os.environ.get("TGT_IPC_SOCKET", "/var/run/tgtd/socket"),
                         int(sys.argv[1])))
    s.sendall(head + body)
    rsp = b""
    while len(rsp) < 8:
        got = s.recv(8 - len(rsp))
        if not got:
            break
        rsp += got
except OSError as exc:
    sys.exit("tgtd control port %s: %s" % (sys.argv[1], exc))
if len(rsp) != 8:
    sys.exit("tgtd closed the connection without an answer")
err, _ = struct.unpack("<II", rsp)
if err:
    sys.exit("tgtd error %d" % err)
"""


def explain(stderr: str) -> str:
    """``tgtd error 14`` -> ``tgtd error 14 (user_exist)``."""
    parts = stderr.strip().rsplit(" ", 1)
    if len(parts) == 2 and parts[0].endswith("tgtd error") and parts[1].isdigit():
        code = int(parts[1])
        return f"{stderr.strip()} ({ERRORS[code] if code < len(ERRORS) else 'unknown'})"
    return stderr.strip()
