"""``tgt`` exporter: the userspace iSCSI target (tgtd) driven by ``tgtadm``.

One export = one target (tid) with LUN 1 (tgt's LUN 0 is its controller),
an ACL by initiator name (``--op bind --mode target --initiator-name IQN``;
never ``-I ALL``) and an incoming CHAP account bound to the target. State is
read back by parsing ``tgtadm --lld iscsi --op show --mode target`` (format
recorded in tests/unit/fixtures/storage/), which also lists each target's
logged-in initiators (``I_T nexus information``: ``Initiator:`` and the
connections' ``IP Address:``). ``control_port`` N selects tgtd's
management socket /var/run/tgtd/socket.N (``tgtd -C N`` / ``tgtadm -C N``) so
test daemons never collide with a system tgtd.

``TgtDaemon`` starts ``tgtd -f`` for one portal address, optionally inside a
network namespace (``nsenter --net``, which keeps the root mount namespace so
volumes on file systems mounted later stay visible), and stops it reliably:
tgtd ignores SIGTERM while targets exist, so targets are deleted first, then
``--op delete --mode system``, then SIGKILL as a last resort.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field

from storage.backends.base import StorageError
from storage.exporters import tgt_ipc
from storage.exporters.base import ExporterUnavailable, ExportSpec, IscsiSession
from storage.exporters.identity import (
    TgtIdentity,
    describe,
    netns_named,
    owner_pid,
    probe_tgt,
    verify_tgt,
)
from storage.runner import CommandFailed, Runner, show

_TARGET = re.compile(r"^Target (\d+): (\S+)$")


@dataclass
class TgtTarget:
    tid: int
    iqn: str
    luns: dict[int, str] = field(default_factory=dict)  # lun -> backing path (LUN >= 1)
    accounts: list[str] = field(default_factory=list)
    acls: list[str] = field(default_factory=list)
    nexus: list[tuple[str, list[str]]] = field(default_factory=list)  # (initiator, [ip])

    def sessions(self) -> list[IscsiSession]:
        return [IscsiSession(iqn, tuple(ips)) for iqn, ips in self.nexus]


def parse_show(text: str) -> list[TgtTarget]:
    """Parse ``tgtadm --op show --mode target`` output."""
    targets: list[TgtTarget] = []
    section, lun = "", None
    for raw in text.splitlines():
        line = raw.strip()
        m = _TARGET.match(raw)
        if m:
            targets.append(TgtTarget(int(m.group(1)), m.group(2)))
            section, lun = "", None
            continue
        if not targets or not line:
            continue
        t = targets[-1]
        if raw.startswith("    ") and not raw.startswith("     ") and line.endswith(":"):
            section = line[:-1]
        elif section == "LUN information" and line.startswith("LUN: "):
            lun = int(line[5:])
        elif section == "LUN information" and line.startswith("Backing store path: "):
            path = line[len("Backing store path: ") :]
            if lun and path != "None":
                t.luns[lun] = path
        elif section == "Account information" and raw.startswith("        "):
            t.accounts.append(line.removesuffix(" (outgoing)"))
        elif section == "ACL information" and raw.startswith("        "):
            t.acls.append(line)
        elif section == "I_T nexus information" and line.startswith("Initiator: "):
            t.nexus.append((line[len("Initiator: ") :].split(" alias:")[0].strip(), []))
        elif section == "I_T nexus information" and line.startswith("IP Address: ") and t.nexus:
            t.nexus[-1][1].append(line[len("IP Address: ") :].strip())
    return targets


def to_spec(t: TgtTarget) -> ExportSpec | None:
    if not t.luns:
        return None
    lun = min(t.luns)
    iname = next((a for a in t.acls if a.startswith("iqn.")), t.acls[0] if t.acls else "")
    user = t.accounts[0] if t.accounts else None
    return ExportSpec(t.iqn, t.luns[lun], iname, user, None, lun)


class TgtExporter:
    kind = "tgt"
    default_lun = 1

    def __init__(
        self,
        runner: Runner | None = None,
        *,
        control_port: int = 0,
        bstype: str = "rdwr",
        expect_portal: str | None = None,
        expect_netns: str | None = None,
    ) -> None:
        self.runner = runner or Runner()
        self.control_port, self.bstype = control_port, bstype
        self.expect_portal, self.expect_netns = expect_portal, expect_netns

    def verify(self) -> TgtIdentity | None:
        """Check the tgtd behind the control port is ours (no-op without ``expect_portal``)."""
        if self.expect_portal is None:
            return None
        return verify_tgt(self.runner, self.control_port, self.expect_portal, self.expect_netns)

    def _adm(self, *args: str, check: bool = True):
        argv = ["tgtadm", "-C", str(self.control_port), "--lld", "iscsi", *args]
        return self.runner.run(argv, timeout=30, check=check)

    def targets(self) -> list[TgtTarget]:
        return parse_show(self._adm("--op", "show", "--mode", "target").stdout)

    # -- protocol -------------------------------------------------------
    def check(self) -> None:
        if not getattr(self.runner, "remote", False) and not shutil.which("tgtadm"):
            raise ExporterUnavailable("tgt: tgtadm not in PATH (apt-get install tgt)")
        try:
            self._adm("--op", "show", "--mode", "target")
        except CommandFailed as e:
            raise ExporterUnavailable(
                f"tgt: tgtd not reachable on control port {self.control_port} ({e.stderr})"
            )
        self.verify()

    def list_exports(self) -> list[ExportSpec]:
        return [s for s in map(to_spec, self.targets()) if s is not None]

    def sessions(self, target_iqn: str) -> list[IscsiSession]:
        return [x for t in self.targets() if t.iqn == target_iqn for x in t.sessions()]

    def export(self, spec: ExportSpec) -> ExportSpec:
        spec = spec.with_lun(self.default_lun).validate()
        if spec.lun == 0:
            raise StorageError("tgt: LUN 0 is the target's controller; use LUN >= 1")
        self.verify()
        targets = self.targets()
        current = next((t for t in targets if t.iqn == spec.target_iqn), None)
        if current is not None:
            if (have := to_spec(current)) is not None and have.key() == spec.key():
                return spec
            self._delete(current, targets)
            targets = [t for t in targets if t.tid != current.tid]
        tid = max((t.tid for t in targets), default=0) + 1
        self._adm("--op", "new", "--mode", "target", "--tid", str(tid), "-T", spec.target_iqn)
        try:
            self._populate(tid, spec, targets)
        except BaseException:
            self._adm(
                "--op", "delete", "--mode", "target", "--force", "--tid", str(tid), check=False
            )
            raise
        return spec

    def unexport(self, target_iqn: str) -> None:
        targets = self.targets()
        for t in targets:
            if t.iqn == target_iqn:
                self._delete(t, targets)

    # -- helpers ----------------------------------------------------------
    def _populate(self, tid: int, spec: ExportSpec, others: list[TgtTarget]) -> None:
        tid_s = str(tid)
        self._adm("--op", "new", "--mode", "logicalunit", "--tid", tid_s, "--lun", str(spec.lun),
                  "--bstype", self.bstype, "-b", spec.path)  # fmt: skip
        self._adm("--op", "bind", "--mode", "target", "--tid", tid_s,
                  "--initiator-name", spec.initiator_iqn)  # fmt: skip
        if spec.chap_user is None:
            return
        if any(spec.chap_user in t.accounts for t in others):
            raise StorageError(f"tgt: CHAP user {spec.chap_user} already serves another target")
        user = spec.chap_user
        self._adm("--op", "delete", "--mode", "account", "--user", user, check=False)
        self._new_account(user, spec.chap_secret or "")
        self._adm("--op", "bind", "--mode", "account", "--tid", tid_s, "--user", user)

    def _new_account(self, user: str, secret: str) -> None:
        """tgtadm's ``--op new --mode account``, with the secret on stdin (see tgt_ipc)."""
        tgt_ipc.account_request(user, secret)  # refuses what tgtd would misparse
        res = self.runner.run(["python3", "-c", tgt_ipc.SCRIPT, str(self.control_port)],
                              input=f"{user}\n{secret}\n", timeout=30, check=False)  # fmt: skip
        if res.rc != 0:
            why = tgt_ipc.explain(res.stderr.replace(secret, "***")) or f"exit {res.rc}"
            raise StorageError(f"tgt: cannot create CHAP account {user}: {why}")

    def _delete(self, t: TgtTarget, targets: list[TgtTarget]) -> None:
        self._adm("--op", "delete", "--mode", "target", "--force", "--tid", str(t.tid))
        for user in t.accounts:
            if not any(user in o.accounts for o in targets if o.tid != t.tid):
                self._adm("--op", "delete", "--mode", "account", "--user", user, check=False)


class TgtDaemon:
    """A private ``tgtd -f`` serving iSCSI on ``portal_ip:port`` (optionally in a netns)."""

    def __init__(
        self,
        portal_ip: str,
        port: int = 3260,
        *,
        control_port: int = 0,
        netns: str | None = None,
        runner: Runner | None = None,
        log_path: str | None = None,
    ) -> None:
        self.portal = f"{portal_ip}:{port}"
        self.control_port, self.netns = control_port, netns
        self.runner = runner or Runner()
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        pre = ["nsenter", f"--net=/run/netns/{self.netns}"] if self.netns else []
        return [
            *pre,
            "tgtd",
            "-f",
            "-C",
            str(self.control_port),
            "--iscsi",
            f"portal={self.portal}",
        ]

    def exporter(self) -> TgtExporter:
        return TgtExporter(
            self.runner,
            control_port=self.control_port,
            expect_portal=self.portal,
            expect_netns=netns_named(self.netns),
        )

    def identity(self) -> TgtIdentity:
        """Who answers on this control port now (raises CommandFailed if nobody)."""
        return probe_tgt(self.runner, self.control_port)

    def verify(self) -> TgtIdentity:
        """The running tgtd on this control port is ours, or ExporterIdentityError."""
        return verify_tgt(self.runner, self.control_port, self.portal, netns_named(self.netns))

    def _sys(self, op: str):
        argv = ["tgtadm", "-C", str(self.control_port), "--op", op, "--mode", "system"]
        return self.runner.run(argv, timeout=10, check=False)

    def running(self) -> bool:
        """True when a tgtd answers on this control port."""
        return self._sys("show").rc == 0

    def start(self, timeout: float = 10.0) -> TgtDaemon:
        """Start tgtd; returns once the started process owns the control port."""
        if self.running():
            who = ""
            with contextlib.suppress(CommandFailed):
                who = f" ({describe(self.identity())})"
            raise StorageError(
                f"tgt: a tgtd already answers on control port {self.control_port}{who}"
            )
        self.proc = self.runner.start(self.argv(), log_path=self.log_path)
        if self.proc is None:  # a FakeRunner: nothing to wait for
            return self
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if owner_pid(self.control_port) == self.proc.pid and self._sys("show").rc == 0:
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self._abandon()
        raise StorageError(
            f"tgt: tgtd did not take control port {self.control_port}: {show(self.argv())} "
            f"(see {self.log_path}); another tgtd may hold it"
        )

    def _abandon(self) -> None:
        """Kill the process we started without touching whoever answers on the port."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(5)
        self.proc = None

    def stop(self, timeout: float = 5.0) -> None:
        ex = self.exporter()
        with contextlib.suppress(CommandFailed):
            for t in ex.targets():
                ex._delete(t, [])
        self._sys("delete")
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> TgtDaemon:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
