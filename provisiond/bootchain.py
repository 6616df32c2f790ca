"""Boot-chain health: a SAN boot is ``active`` only when it finished; a broken one fails.

Owns three things the sanboot deployer (:mod:`provisiond.sanboot`) and the
storage watch (:mod:`provisiond.storagewatch`) use:

:class:`SanFetches` (``ctx.san_fetches``)
    how often each machine fetched its SAN boot script since its current
    start attempt (or since it became active), and when it last did. iPXE's
    SAN script retries itself (``sleep 10; chain`` the script again) when
    ``sanboot`` fails, so a machine whose chain breaks — portal unreachable,
    wrong CHAP secret, no such LUN, a disk that does not boot — shows up as
    a machine that keeps fetching its script. In memory, per daemon process.
:func:`judge`
    the pure rule. A start is proven (``active``) when the initiator's iSCSI
    login was seen and the machine then did not fetch its SAN script again
    for ``iscsi.boot_settle`` seconds: iPXE logged in, read the disk and
    handed over to what it booted (a login followed by a fetch is a failed
    boot, e.g. a wrong LUN). It fails after ``iscsi.max_script_fetches``
    fetches (a boot loop), or when ``iscsi.boot_timeout`` passes; each reason
    says what was seen and what to check.
:class:`OsDhcp` (``ctx.os_dhcp``) and :func:`judge_disk`
    the same for a ``local`` deploy (:mod:`provisiond.localdeploy`): once the
    agent has written the disk and rebooted, the machine's local-boot script
    fetches are counted in ``ctx.local_fetches`` (a :class:`SanFetches`), and
    the DHCP service hands every request it decodes to
    :meth:`OsDhcp.observe`, which keeps, for the MACs a deploy watches, the
    requests of a DHCP client that is not a network-boot client (no PXE or
    HTTPClient vendor class, no iPXE user class or options) sent after that
    MAC's local-boot script was served: the booted OS's own DHCP client.
    :func:`judge_disk` is the rule: a report-in with the deploy's one-time
    token proves the boot; for an image without a report-in slot
    (:mod:`provisiond.reportslot`) the booted OS's DHCP request does.
Test fault injection
    ``PROVISIOND_TEST_FAULT`` (a comma-separated list) or
    ``PROVISIOND_TEST_FAULT_FILE`` (a file holding that list, read on every
    SAN script, so a test can add and clear a fault while the daemon runs)
    name faults the SAN boot script is rendered with: ``wrong-chap`` (a
    wrong CHAP secret), ``wrong-lun`` (LUN + 1), ``wrong-portal`` (an address
    nobody serves, TEST-NET-1). For tests only: never set them on a real
    daemon. Each injection is logged as a warning.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from pxe.boot import BootAction, BootSpec
from pxe.dhcp import bootfile
from pxe.dhcp.codec import DhcpPacket

FAULT_ENV, FAULT_FILE_ENV = "PROVISIOND_TEST_FAULT", "PROVISIOND_TEST_FAULT_FILE"
FAULTS = ("wrong-chap", "wrong-lun", "wrong-portal")
WRONG_PORTAL = "192.0.2.1"  # RFC 5737 TEST-NET-1: documentation only, never routed


class SanFetches:
    """Per-resource SAN script fetches since the last :meth:`reset` (thread-safe)."""

    def __init__(self, clock=time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._seen: dict[int, tuple[int, float]] = {}  # resource id -> (count, last fetch)

    def fetched(self, resource_id: int) -> int:
        with self._lock:
            n = self._seen.get(resource_id, (0, 0.0))[0] + 1
            self._seen[resource_id] = (n, self._clock())
            return n

    def reset(self, resource_id: int) -> None:
        with self._lock:
            self._seen.pop(resource_id, None)

    def count(self, resource_id: int) -> int:
        with self._lock:
            return self._seen.get(resource_id, (0, 0.0))[0]

    def last(self, resource_id: int) -> float | None:
        with self._lock:
            seen = self._seen.get(resource_id)
            return seen[1] if seen else None


@dataclass(frozen=True)
class Seen:
    """What a starting sanboot appliance's watcher saw so far (monotonic seconds)."""

    fetches: int
    last_fetch: float | None
    login_at: float | None  # when the current login was first seen (None: not seen)
    now: float
    started: float
    login_ever: bool = False  # a login was seen in this attempt, even if a fetch followed


@dataclass(frozen=True)
class Verdict:
    state: str  # "wait" | "active" | "failed"
    reason: str = ""


def judge(
    seen: Seen,
    *,
    initiator: str,
    target: str,
    max_fetches: int,
    settle: float,
    timeout: float,
) -> Verdict:
    """Is this SAN boot proven, still under way, or broken? (the rule in the module doc)"""
    times = f"{seen.fetches} time{'s' if seen.fetches != 1 else ''}"
    if seen.login_at is not None and seen.now - seen.login_at >= settle:
        return Verdict("active", f"iSCSI login of {initiator} seen, no SAN script fetch for "
                                 f"{settle:g} s after it")  # fmt: skip
    if seen.fetches >= max_fetches:
        logged = (
            "it logged in but did not boot (wrong LUN? an image that does not boot?)"
            if seen.login_ever
            else f"no iSCSI login of {initiator} to {target} was seen (portal unreachable "
            "from the machine? wrong CHAP secret?)"
        )
        return Verdict("failed", f"boot loop: the machine fetched its SAN script {times} "
                                 f"without booting; {logged}")  # fmt: skip
    if seen.now - seen.started >= timeout:
        what = (
            f"no completed SAN boot of {initiator} from {target} within {timeout:g} s"
            if seen.login_ever
            else f"no iSCSI login from {initiator} to {target} within {timeout:g} s"
        )
        hint = (
            "is the machine powered on and PXE-booting? the daemon log names refused boot scripts"
            if seen.fetches == 0
            else "check that the machine reaches the portal and the target serves it"
        )
        return Verdict("failed", f"{what}; the machine fetched its SAN script {times} ({hint})")
    return Verdict("wait")


# -- local deploys: did the written disk boot? ---------------------------------
@dataclass(frozen=True)
class OsSeen:
    """DHCP requests of a watched MAC's booted OS (after its local-boot script)."""

    count: int = 0
    ip: str | None = None  # the address it asked for or holds (option 50 / ciaddr)
    vendor: str = ""  # its vendor class (option 60), printable and short
    armed: bool = False  # its local-boot script was served: from now on a request counts


_PRINTABLE = str.maketrans({c: None for c in map(chr, range(32))} | {"\x7f": None})


class OsDhcp:
    """Booted-OS DHCP requests of the MACs a local deploy watches (thread-safe).

    :meth:`observe` runs on the DHCP serve thread for every decoded request:
    one dict lookup for a MAC nobody watches.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, OsSeen] = {}

    def watch(self, mac: str) -> None:
        with self._lock:
            self._seen[mac] = OsSeen()

    def unwatch(self, mac: str) -> None:
        with self._lock:
            self._seen.pop(mac, None)

    def arm(self, mac: str) -> None:
        """The machine got its local-boot script: the next OS DHCP request is its OS's."""
        with self._lock:
            if mac in self._seen:
                self._seen[mac] = replace(self._seen[mac], armed=True)

    def seen(self, mac: str) -> OsSeen:
        with self._lock:
            return self._seen.get(mac, OsSeen())

    def observe(self, p: DhcpPacket) -> None:
        if p.chaddr not in self._seen or p.op != 1 or bootfile.detect(p) is not None:
            return
        vendor = (p.text_opt(60) or "").translate(_PRINTABLE)[:48]
        ip = p.ip_opt(50) or (p.ciaddr if p.ciaddr != "0.0.0.0" else None)
        with self._lock:
            old = self._seen.get(p.chaddr)
            if old is not None and old.armed:
                self._seen[p.chaddr] = OsSeen(old.count + 1, ip or old.ip, vendor, True)


@dataclass(frozen=True)
class DiskSeen:
    """What a starting local appliance's watcher saw since the agent rebooted the machine."""

    fetches: int  # local-boot scripts served
    os_dhcp: OsSeen  # DHCP of the booted OS
    reported: str | None  # the name it reported in as (None: no report-in yet)
    now: float
    started: float  # when the agent's result arrived (monotonic)


def judge_disk(
    seen: DiskSeen, *, what: str, phones_home: bool, max_fetches: int, timeout: float
) -> Verdict:
    """Did the written disk boot? ``what`` = "wrote and verified IMAGE on DISK of MACHINE"."""
    times = f"{seen.fetches} time{'s' if seen.fetches != 1 else ''}"
    dhcp = seen.os_dhcp
    via = f" (vendor class {dhcp.vendor!r})" if dhcp.vendor else ""
    if seen.reported:
        return Verdict("active", f"the booted OS reported in as {seen.reported}")
    if dhcp.count and not phones_home:
        return Verdict("active", f"the booted OS's DHCP client asked for "
                                 f"{dhcp.ip or 'an address'}{via} after its local-boot script "
                                 "(the image has no report-in slot)")  # fmt: skip
    if seen.fetches >= max_fetches:
        return Verdict("failed", f"{what}; boot loop: the machine fetched its local-boot script "
                                 f"{times} without its OS coming up (does the image boot on "
                                 "this machine? see its console)")  # fmt: skip
    if seen.now - seen.started < timeout:
        return Verdict("wait")
    if dhcp.count:  # only an image that phones home gets here with a DHCP request seen
        return Verdict("failed", f"{what}; its OS came up (DHCP for {dhcp.ip or 'an address'}"
                                 f"{via}) but did not report in within {timeout:g} s (does "
                                 "the image's report-in service run? can it reach provisiond's "
                                 "HTTP port?); the machine fetched its local-boot script "
                                 f"{times} since")  # fmt: skip
    if seen.fetches == 0:
        return Verdict("failed", f"{what}; the machine did not PXE-boot within {timeout:g} s "
                                 "after the agent rebooted it (is PXE first in its boot order? "
                                 "did it power off?)")  # fmt: skip
    proof = "no report-in and no DHCP request" if phones_home else "no DHCP request"
    return Verdict("failed", f"{what}; {proof} from the booted OS within {timeout:g} s; the "
                             f"machine fetched its local-boot script {times} since (does the "
                             "disk boot? see its console)")  # fmt: skip


# -- test fault injection -----------------------------------------------------
def active_faults(env: dict[str, str] | None = None) -> frozenset[str]:
    """The faults a test asked for (environment, or the file it names); empty normally."""
    env = os.environ if env is None else env
    text = env.get(FAULT_ENV, "")
    path = env.get(FAULT_FILE_ENV)
    if path:
        try:
            text += "," + Path(path).read_text()
        except OSError:
            pass
    names = {f.strip() for f in text.replace("\n", ",").split(",") if f.strip()}
    unknown = names - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown test fault(s) {sorted(unknown)}; known: {', '.join(FAULTS)}")
    return frozenset(names)


def inject(spec: BootSpec | None, faults: frozenset[str]) -> BootSpec | None:
    """``spec`` with the SAN faults applied (only SAN boot scripts are touched)."""
    if spec is None or spec.action != BootAction.SANBOOT or spec.san is None or not faults:
        return spec
    san = spec.san
    if "wrong-chap" in faults:
        san = replace(san, chap_secret=("Wrong" + san.chap_secret)[:16])
    if "wrong-lun" in faults:
        san = replace(san, lun=san.lun + 1)
    if "wrong-portal" in faults:
        san = replace(san, portal=WRONG_PORTAL)
    return replace(spec, san=san)
