"""Exporter identity: is the iSCSI target daemon we talk to really ours?

Owns answering "who serves this tgt control port, in which network namespace,
on which portals?" and refusing a stranger. A ``tgtd`` left over from an
earlier run (tgtd ignores SIGTERM while it has targets) or the distribution's
own ``tgt`` service can sit on the control port provisiond is configured for;
every ``tgtadm`` call would then silently go to it, and exports would land on
a portal the machines cannot reach.

tgtd holds a POSIX lock on ``/var/run/tgtd/socket.N.lock`` for as long as it
owns control port N, so ``/proc/locks`` names its pid (the lock file's device
and inode are the key). From the pid, ``/proc/PID/ns/net`` names its network
namespace; ``tgtadm --op show --mode portal`` lists the portals it listens on.
A tgtd is ours when it serves the wanted portal (exactly, or a wildcard of the
same port) and, where its pid is visible, lives in the wanted namespace.

LIO has no daemon: :func:`lio_portals` reads each target's portal list from
configfs (``iscsi/<iqn>/tpgt_N/np/<ip>:<port>``).

Parsing is pure (:func:`parse_proc_locks`, :func:`parse_portals`,
:func:`check_identity`); :func:`probe_tgt` reads the host.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from storage.exporters.base import ExporterUnavailable

if TYPE_CHECKING:  # the LIO helper ships this module to storage hosts without storage.runner
    from storage.runner import Runner

LOCK_DIR = "/var/run/tgtd"
PROC_LOCKS = "/proc/locks"
WILDCARDS = ("0.0.0.0", "[::]", "::")


class ExporterIdentityError(ExporterUnavailable):
    """The target daemon behind our control port (or configfs) is not the one we expect."""


@dataclass(frozen=True)
class LockHolder:
    """One line of /proc/locks: who holds a lock on which file (device + inode)."""

    pid: int
    major: int
    minor: int
    inode: int


@dataclass(frozen=True)
class TgtIdentity:
    """What answers on one tgt control port."""

    control_port: int
    pid: int | None  # None: no lock holder visible (lock file missing, other pid namespace)
    netns: str | None  # "net:[4026531833]"; None when the pid is unknown or unreadable
    portals: tuple[str, ...]  # "10.0.0.1:3260"


def parse_proc_locks(text: str) -> list[LockHolder]:
    """Lock holders from /proc/locks; blocked waiters (``->`` lines) are skipped."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6 or parts[1] == "->":
            continue
        try:
            pid = int(parts[4])
            major, minor, inode = parts[5].split(":")
            out.append(LockHolder(pid, int(major, 16), int(minor, 16), int(inode)))
        except ValueError:
            continue
    return out


def parse_portals(text: str) -> tuple[str, ...]:
    """``tgtadm --lld iscsi --op show --mode portal``: ``Portal: 10.0.0.1:3260,1`` lines."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Portal: "):
            out.append(line[len("Portal: ") :].rsplit(",", 1)[0])
    return tuple(out)


def serves(portals: tuple[str, ...], want: str) -> bool:
    """True when one of ``portals`` is ``want`` or a wildcard address on its port."""
    port = want.rsplit(":", 1)[-1]
    return any(p == want or p in {f"{w}:{port}" for w in WILDCARDS} for p in portals)


def lock_path(control_port: int, lock_dir: str = LOCK_DIR) -> str:
    return f"{lock_dir}/socket.{control_port}.lock"


def lock_owner(path: str, locks_text: str) -> int | None:
    """The pid holding a lock on ``path`` according to ``locks_text``; None if nobody."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    for h in parse_proc_locks(locks_text):
        if (h.major, h.minor, h.inode) == (major, minor, st.st_ino) and h.pid > 0:
            return h.pid
    return None


def netns_of_pid(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def netns_named(name: str | None) -> str | None:
    """The id of a named namespace (``ip netns``), or of our own when ``name`` is None."""
    if name is None:
        return netns_of_pid(os.getpid())
    try:
        return f"net:[{os.stat(f'/run/netns/{name}').st_ino}]"
    except OSError:
        return None


def describe(ident: TgtIdentity) -> str:
    who = f"pid {ident.pid}" if ident.pid else "pid unknown"
    ns = f", network namespace {ident.netns}" if ident.netns else ""
    portals = ", ".join(ident.portals) or "none"
    return f"{who}{ns}, portals {portals}"


def check_identity(ident: TgtIdentity, *, want_portal: str, want_netns: str | None) -> None:
    """Raise :class:`ExporterIdentityError` unless ``ident`` is the tgtd we expect."""
    wrong_ns = ident.netns is not None and want_netns is not None and ident.netns != want_netns
    if serves(ident.portals, want_portal) and not wrong_ns:
        return
    found = ", ".join(ident.portals) or "no portal"
    why = (
        f"it runs in network namespace {ident.netns}, not ours ({want_netns})"
        if wrong_ns
        else f"it serves {found}, not {want_portal}"
    )
    raise ExporterIdentityError(
        f"tgt: the tgtd on control port {ident.control_port} is not ours: {why} "
        f"({describe(ident)}; portal wanted {want_portal}). Fix: set iscsi.tgt_control_port "
        f"to a free port (1-1000) in the config, or stop the other tgtd (remove its targets, "
        f"then `tgtadm -C {ident.control_port} --op delete --mode system`)"
    )


def probe_tgt(
    runner: Runner,
    control_port: int,
    *,
    lock_dir: str = LOCK_DIR,
    proc_locks: str = PROC_LOCKS,
) -> TgtIdentity:
    """Ask the host who serves ``control_port`` (raises CommandFailed if nobody answers)."""
    res = runner.run(
        ["tgtadm", "-C", str(control_port), "--lld", "iscsi", "--op", "show", "--mode", "portal"],
        timeout=10,
    )
    pid = owner_pid(control_port, lock_dir=lock_dir, proc_locks=proc_locks)
    return TgtIdentity(control_port, pid, netns_of_pid(pid) if pid else None,
                       parse_portals(res.stdout))  # fmt: skip


def owner_pid(control_port: int, *, lock_dir: str = LOCK_DIR, proc_locks: str = PROC_LOCKS):
    """The pid of the tgtd that owns ``control_port`` (its lock), or None."""
    try:
        text = Path(proc_locks).read_text()
    except OSError:
        return None
    return lock_owner(lock_path(control_port, lock_dir), text)


def verify_tgt(
    runner: Runner, control_port: int, want_portal: str, want_netns: str | None
) -> TgtIdentity:
    """Probe and check in one call; ExporterUnavailable when nothing answers."""
    from storage.runner import CommandFailed

    try:
        ident = probe_tgt(runner, control_port)
    except CommandFailed as e:
        raise ExporterUnavailable(
            f"tgt: no tgtd answers on control port {control_port} ({e.stderr.strip()})"
        )
    check_identity(ident, want_portal=want_portal, want_netns=want_netns)
    return ident


def lio_portals(configfs: str, target_iqn: str, runner: Runner | None = None) -> tuple[str, ...]:
    """The portals of every TPG of ``target_iqn`` in configfs (``.../np/<ip>:<port>``).

    With ``runner`` (a storage host's SSH runner), the host's configfs is read.
    """
    base = Path(configfs) / "iscsi" / target_iqn
    if runner is None:
        return tuple(sorted(np.name for np in base.glob("tpgt_*/np/*")))
    script = (
        f'for p in {shlex.quote(str(base))}/tpgt_*/np/*; do [ -e "$p" ] && echo "${{p##*/}}"; done'
    )
    return tuple(sorted(runner.run(["sh", "-c", f"{script}; true"]).stdout.split()))


def check_lio_portal(
    configfs: str, target_iqn: str, want_portal: str, runner: Runner | None = None
) -> None:
    """A target of ours in configfs serves ``want_portal`` (no such target: nothing to check).

    With ``runner``, the configfs checked is the storage host's.
    """
    target = Path(configfs) / "iscsi" / target_iqn
    if runner is None and not target.is_dir():
        return
    if runner is not None and runner.run(["test", "-d", str(target)], check=False).rc != 0:
        return
    found = lio_portals(configfs, target_iqn, runner)
    if serves(found, want_portal):
        return
    raise ExporterIdentityError(
        f"lio: target {target_iqn} in {configfs} listens on {', '.join(found) or 'no portal'}, "
        f"not {want_portal}. Fix: another tool manages this target (targetcli?); remove it "
        "there, or set `address` / iscsi.port in the config to the portal it should serve"
    )
