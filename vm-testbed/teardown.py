"""Teardown of a test bed by name: its processes, mounts, loop devices, namespace.

Owns the one rule for what a test bed may remove: processes whose network
namespace is the test bed's (pidfiles under the work directory are checked
against it, so a pid reused after a crashed run is never signalled), mounts
and loop devices backed by files under the work directory, and the
namespace itself. Used by ``Testbed.down`` and on ``up`` for leftovers.

Stdlib only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from vm import pid_alive, read_pid


def sh(argv: list[str], check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def ns_inode(ns: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{ns}").st_ino
    except FileNotFoundError:
        return None


def in_ns(pid: int, inode: int | None) -> bool:
    try:
        return inode is not None and os.stat(f"/proc/{pid}/ns/net").st_ino == inode
    except (FileNotFoundError, PermissionError):
        return False


def cleanup(ns: str, workdir: Path | str) -> list[str]:
    """Remove what a test bed ``ns``/``workdir`` left: processes, mounts, loops, ns.

    Only processes in that namespace are signalled (pidfiles are checked
    against it, so a reused pid of a crashed run is never hit).
    """
    workdir = Path(workdir).resolve()
    done: list[str] = []
    inode = ns_inode(ns)
    pids = set()
    for pidfile in [*workdir.glob("run/*.pid"), *workdir.glob("vms/*.pid")]:
        pid = read_pid(pidfile)
        if pid is not None and in_ns(pid, inode):
            pids.add(pid)
        pidfile.unlink(missing_ok=True)
    if inode is not None:
        listed = sh(["ip", "netns", "pids", ns]).stdout.split()
        pids |= {int(p) for p in listed if p.isdigit() and in_ns(int(p), inode)}
    done += _kill_all(sorted(pids))
    done += _unmount_under(workdir)
    if inode is not None:
        sh(["ip", "netns", "del", ns])
        done.append(f"netns {ns}")
    return done


def _kill_all(pids: list[int], grace: float = 10) -> list[str]:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        for p in pids:  # reap our own children so they do not linger as zombies
            try:
                os.waitpid(p, os.WNOHANG)
            except ChildProcessError:
                pass
        time.sleep(0.05)
    for pid in pids:
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)  # e.g. tgtd ignores SIGTERM while targets exist
            except ProcessLookupError:
                pass
    return [f"pid {p}" for p in pids]


def _unmount_under(workdir: Path) -> list[str]:
    done = []
    mounts = sh(["findmnt", "-rn", "-o", "TARGET"]).stdout.split()
    for target in sorted((m for m in mounts if m.startswith(f"{workdir}/")), reverse=True):
        if sh(["umount", "-l", target]).returncode == 0:
            done.append(f"umount {target}")
    for line in sh(["losetup", "-a"]).stdout.splitlines():
        dev, _, rest = line.partition(":")
        if f"({workdir}/" in rest and sh(["losetup", "-d", dev]).returncode == 0:
            done.append(f"losetup -d {dev}")
    return done
