"""Faults in the SAN-boot chain against real daemons: tgtd, provisiond serve, libiscsi.

Exporter identity: a stale tgtd on our control port, in another network
namespace and on another address, makes ``provisiond serve`` fail fast with a
message naming the control port, both portals and the fix; the exporter never
exports onto it; a tgtd of ours left by an earlier run is adopted. LIO's
configfs portal check runs on the storage VM's kernel (tests/testbed/test_storage_host_vm.py).

Boot chain: one daemon (module fixture) with a short settle time, fetch limit
and reconcile interval; each test is a machine in its own client namespace
that does what iPXE does — fetch its SAN script from its leased address, log
in with what the script says (libiscsi's iscsi-perf, held a few seconds) —
and checks the state provisiond shows within a bounded time: a good boot is
``active`` only after it settled; a wrong CHAP secret (test hook
``PROVISIOND_TEST_FAULT_FILE``) or a portal dropped by nftables is a boot
loop, ``failed`` with the reason, and a retry after the fix works; a target
deleted behind provisiond's back is restored (``export.restored``), one
whose volume is gone fails the appliance (``storage.fault``); a machine that
never fetches its script fails at ``boot_timeout``.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from provisiond.bootchain import FAULT_FILE_ENV
from storage.backends import FileBackend
from storage.exporters import (
    ExporterIdentityError,
    ExportSpec,
    TgtDaemon,
    TgtExporter,
    new_chap_secret,
)
from storage.exporters.identity import netns_named, owner_pid
from storage.runner import Runner
from tests.daemonlab import LabDaemon, free_control_port, lab_config
from tests.netlab import Lab

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]
MiB = 1 << 20
TARGET = "iqn.2025-01.test.provisiond:bc01"
INITIATOR = "iqn.2025-01.test.provisiond:bcinit"


def _needs(*programs: str) -> None:
    for p in programs:
        if not shutil.which(p):
            pytest.skip(reason=f"needs {p} (make test installs it with apt-get)")


@pytest.fixture
def stale_tgtd(tmp_path):
    """A tgtd on a control port of its own, serving another namespace and address."""
    _needs("tgtd", "tgtadm", "nsenter")
    with Lab("bcold") as other:
        port = free_control_port()
        d = TgtDaemon(other.server_ip, control_port=port, netns=other.server.name,
                      log_path=str(tmp_path / "stale-tgtd.log"))  # fmt: skip
        d.start()
        try:
            yield other, d
        finally:
            d.stop()


def _storage_extra(tmp_path) -> str:
    return f'[[storage]]\nname = "local"\nbackend = "file"\npath = "{tmp_path / "images"}"\n'


def test_serve_fails_fast_on_a_foreign_tgtd(stale_tgtd, tmp_path):
    other, stale = stale_tgtd
    with Lab("bcsrv") as lab:
        d = LabDaemon(lab, tmp_path, lab_config(lab, tmp_path / "state", _storage_extra(tmp_path),
                                                stale.control_port))  # fmt: skip
        d.cli("init")
        t0 = time.monotonic()
        res = d.serve_again(timeout=60)
        took = time.monotonic() - t0
        out = res.stdout + res.stderr
        assert res.returncode != 0, out
        assert took < 30, f"serve took {took:.1f} s to give up"
        assert f"the tgtd on control port {stale.control_port} is not ours" in out, out
        assert f"portals {other.server_ip}:3260" in out and f"wanted {lab.server_ip}:3260" in out
        assert "iscsi.tgt_control_port" in out and "--op delete --mode system" in out
        assert "started tgtd" not in out
    assert stale.running() and stale.exporter().targets() == []  # the stranger is untouched


def test_start_does_not_take_a_port_another_tgtd_owns(stale_tgtd, tmp_path):
    _other, stale = stale_tgtd
    with Lab("bcown") as lab:
        ours = TgtDaemon(lab.server_ip, control_port=stale.control_port, netns=lab.server.name,
                         log_path=str(tmp_path / "ours.log"))  # fmt: skip
        with pytest.raises(
            Exception, match=f"already answers on control port {stale.control_port}"
        ):
            ours.start()
        assert ours.proc is None
        free = TgtDaemon(lab.server_ip, control_port=free_control_port(), netns=lab.server.name,
                         log_path=str(tmp_path / "free.log"))  # fmt: skip
        free.start()
        try:
            assert owner_pid(free.control_port) == free.proc.pid  # started = owns the port
            assert free.verify().netns == netns_named(lab.server.name)
        finally:
            free.stop()
    assert owner_pid(stale.control_port) == stale.proc.pid


def test_exporter_never_exports_onto_a_foreign_tgtd(stale_tgtd, tmp_path):
    _other, stale = stale_tgtd
    vol = FileBackend(tmp_path).create("bc01", 8 * MiB)
    with Lab("bcexp") as lab:
        ex = TgtExporter(Runner(), control_port=stale.control_port,
                         expect_portal=f"{lab.server_ip}:3260",
                         expect_netns=netns_named(lab.server.name))  # fmt: skip
        spec = ExportSpec(TARGET, vol.path, INITIATOR, "bc01", new_chap_secret())
        with pytest.raises(ExporterIdentityError, match="not ours"):
            ex.export(spec)
        with pytest.raises(ExporterIdentityError, match="not ours"):
            ex.check()
    assert stale.exporter().targets() == []


def test_own_tgtd_from_an_earlier_run_is_adopted(tmp_path):
    _needs("tgtd", "tgtadm", "nsenter", "curl")
    with Lab("bcadp") as lab:
        port = free_control_port()
        earlier = TgtDaemon(lab.server_ip, control_port=port, netns=lab.server.name,
                            log_path=str(tmp_path / "earlier.log"))  # fmt: skip
        earlier.start()
        try:
            d = LabDaemon(lab, tmp_path, lab_config(lab, tmp_path / "state",
                                                    _storage_extra(tmp_path), port))  # fmt: skip
            d.cli("init")
            d.start()
            d.stop()
            log = d.log.read_text()
            assert f"tgtd already serves {lab.server_ip}:3260 (control port {port}, pid " in log
            assert "start-up failed" not in log
        finally:
            earlier.stop()


def test_serve_starts_its_own_tgtd_and_says_so_only_once_it_owns_the_port(tmp_path):
    _needs("tgtd", "tgtadm", "nsenter", "curl")
    with Lab("bcnew") as lab:
        port = free_control_port()
        d = LabDaemon(lab, tmp_path, lab_config(lab, tmp_path / "state",
                                                _storage_extra(tmp_path), port))  # fmt: skip
        d.cli("init")
        d.start()
        try:
            pid = owner_pid(port)
            assert pid is not None
            assert f"started tgtd on {lab.server_ip}:3260 (control port {port}, pid {pid})" in (
                d.log.read_text()
            )
            assert os.readlink(f"/proc/{pid}/ns/net") == netns_named(lab.server.name)
        finally:
            d.stop()
            TgtDaemon(lab.server_ip, control_port=port).stop()


# -- the boot chain -------------------------------------------------------------
SETTLE, FETCHES, TIMEOUT = 3, 3, 25
BOOT_ISCSI = (f"boot_settle = {SETTLE}\nmax_script_fetches = {FETCHES}\n"
              f"boot_timeout = {TIMEOUT}\nreconcile_interval = 1\n")  # fmt: skip


class Chain:
    """The module's daemon, its lab and the fault file its SAN scripts obey."""

    def __init__(self, lab: Lab, d: LabDaemon, faults: Path, port: int) -> None:
        self.lab, self.d, self.faults, self.port = lab, d, faults, port
        self.n = 0

    def exporter(self) -> TgtExporter:
        return TgtExporter(Runner(), control_port=self.port)

    def machine(self, name: str):
        """A registered machine with a sanboot appliance ``name`` whose start job runs."""
        self.n += 1
        mac, ip = f"52:54:00:bc:00:{self.n:02x}", f"{self.lab.net}.{50 + self.n}"
        client = self.lab.add_client(mac=mac, address=ip)
        self.d.register(client, mac, ip)
        self.d.cli("appliance", "create", "--resource", mac, "--image", "tiny", "--mode",
                   "sanboot", "--name", name)  # fmt: skip
        return client, mac, self.start(name)

    def start(self, name: str) -> int:
        job_id = int(re.search(r"job (\d+)", self.d.cli("appliance", "start", name).stdout)[1])
        deadline = time.monotonic() + 60
        while not self.d.cli_json("appliance", "show", name)["params"].get("target_iqn"):
            assert time.monotonic() < deadline, self.d.cli_json("job", "show", str(job_id))
            time.sleep(0.3)
        return job_id

    def app(self, name: str) -> dict:
        return self.d.cli_json("appliance", "show", name)

    def wait_state(self, name: str, state: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while (app := self.app(name))["state"] != state:
            assert time.monotonic() < deadline, f"{name} not {state} in {timeout} s: {app}"
            time.sleep(0.5)
        return app

    def events(self, action: str, target: str) -> list[dict]:
        rows = self.d.cli_json("event", "list", "--limit", "200")
        return [e for e in rows if e["action"] == action and e["target"] == target]


def san_attempt(chain: Chain, client, mac: str, source: str, hold: float = 3.0) -> str:
    """What iPXE does once: fetch the SAN script, log in as it says, read for ``hold`` s."""
    code, script = chain.d.boot_script(client, mac, source=source)
    assert code == 200 and "sanboot" in script, script
    portal, lun, iqn = re.search(r"iscsi:([\d.]+):::(\d+):(\S+)", script).groups()
    initiator = re.search(r"set initiator-iqn (\S+)", script)[1]
    user = re.search(r"set username (\S+)", script)[1]
    secret = re.search(r"set password (\S+)", script)[1]
    url = f"iscsi://{user}%{secret}@{portal}:3260/{iqn}/{lun}"
    res = client.run(["timeout", str(hold), "iscsi-perf", "-i", initiator, url],
                     check=False, timeout=hold + 30)  # fmt: skip
    return res.stdout + res.stderr


def boot_until(chain: Chain, client, mac: str, name: str, state: str, hold: float = 3.0) -> dict:
    """Boot attempts (each a script fetch) until the appliance is ``state``; bounded."""
    source = chain.d.dhcp_boot(client)
    for _ in range(FETCHES + 2):
        san_attempt(chain, client, mac, source, hold)
        deadline = time.monotonic() + SETTLE + 3
        while time.monotonic() < deadline:
            app = chain.app(name)
            if app["state"] == state:
                return app
            if app["state"] != "starting":
                raise AssertionError(f"{name} is {app['state']}, not {state}: {app}")
            time.sleep(0.5)
    raise AssertionError(f"{name} not {state} after {FETCHES + 2} boot attempts: {chain.app(name)}")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    _needs("tgtd", "tgtadm", "iscsi-perf", "curl", "busybox", "timeout")
    tmp = tmp_path_factory.mktemp("bootchain")
    faults = tmp / "faults"
    faults.write_text("")
    old = os.environ.get(FAULT_FILE_ENV)
    os.environ[FAULT_FILE_ENV] = str(faults)  # the test hook; the daemon inherits it
    try:
        with Lab("bchain") as lab:
            port = free_control_port()
            extra = _storage_extra(tmp) + f'[images]\nimport_dirs = ["{tmp}"]\n'
            extra += "[agent]\nheartbeat_timeout = 3600\n"
            d = LabDaemon(lab, tmp, lab_config(lab, tmp / "state", extra, port, BOOT_ISCSI))
            d.cli("init")
            master = tmp / "master.raw"
            with open(master, "wb") as fh:
                fh.truncate(16 * MiB)
                fh.write(b"BOOTCHAIN" * 100)
            d.cli("image", "import", str(master), "--name", "tiny")
            d.add_fake_kernel()
            d.start()
            try:
                yield Chain(lab, d, faults, port)
            finally:
                d.stop()
                TgtDaemon(lab.server_ip, control_port=port).stop()
    finally:
        if old is None:
            os.environ.pop(FAULT_FILE_ENV, None)
        else:
            os.environ[FAULT_FILE_ENV] = old


def test_good_boot_is_active_only_once_settled_and_a_later_loop_fails_it(chain):
    client, mac, job_id = chain.machine("good")
    source = chain.d.dhcp_boot(client)
    san_attempt(chain, client, mac, source, hold=2)
    app = chain.wait_state("good", "active", timeout=SETTLE + 20)
    assert "iSCSI login of" in app["state_reason"], app
    assert f"no SAN script fetch for {SETTLE} s after it" in app["state_reason"], app
    assert f"waiting {SETTLE} s for the boot to settle" in chain.d.log.read_text()
    job = chain.d.wait_job(job_id)
    assert job["state"] == "succeeded" and "booted" in job["outcome"], job
    # a reboot that comes back (its OS holds the session) is no loop: the count starts over
    for _ in range(FETCHES):  # without the start-over, the third would fail it
        san_attempt(chain, client, mac, source, hold=SETTLE + 4)
    time.sleep(2)
    assert chain.app("good")["state"] == "active", chain.app("good")
    # the booted OS falls back into iPXE again and again: a boot loop, even when active
    for _ in range(FETCHES):
        code, _script = chain.d.boot_script(client, mac, source=source)
        assert code == 200
    app = chain.wait_state("good", "failed", timeout=15)
    assert "boot loop" in app["state_reason"] and "since it became active" in app["state_reason"]
    assert chain.d.cli_json("resource", "show", mac)["state"] == "failed"


def test_a_login_followed_by_a_refetch_is_no_boot(chain):
    """iPXE logged in but what it read did not boot (a wrong LUN, a broken disk)."""
    client, mac, job_id = chain.machine("relogin")
    source = chain.d.dhcp_boot(client)
    for _ in range(FETCHES):  # each attempt fetches again right after the last login
        san_attempt(chain, client, mac, source, hold=1.5)
    app = chain.wait_state("relogin", "failed", timeout=15)
    assert "boot loop" in app["state_reason"], app
    assert not [e for e in chain.events("appliance.state", "relogin") if "-> active" in e["detail"]]
    assert "fetched its SAN script again after logging in" in chain.d.log.read_text()
    assert chain.d.wait_job(job_id)["state"] == "failed"


def test_wrong_chap_is_a_boot_loop_and_a_retry_after_the_fix_works(chain):
    client, mac, job_id = chain.machine("chap")
    chain.faults.write_text("wrong-chap\n")
    try:
        app = boot_until(chain, client, mac, "chap", "failed", hold=2)
    finally:
        chain.faults.write_text("")
    reason = app["state_reason"]
    assert f"fetched its SAN script {FETCHES} times" in reason and "boot loop" in reason, reason
    assert "no iSCSI login" in reason and "CHAP" in reason, reason
    assert chain.d.wait_job(job_id)["state"] == "failed"
    assert any(
        "-> failed: boot loop" in e["detail"] for e in chain.events("appliance.state", "chap")
    )
    assert "TEST FAULT injected" in chain.d.log.read_text()
    # fixed (the fault is gone): a retry works
    job2 = chain.start("chap")
    app = boot_until(chain, client, mac, "chap", "active")
    assert "booted" in app["state_reason"]
    assert chain.d.wait_job(job2)["state"] == "succeeded"


def test_portal_dropped_by_a_firewall_fails_with_the_reason(chain):
    _needs("nft")
    client, mac, job_id = chain.machine("fw")
    srv = chain.lab.server
    srv.run(["nft", "add", "table", "inet", "bcfw"])
    try:
        srv.run(["nft", "add chain inet bcfw input { type filter hook input priority 0 ; }"])
        srv.run(["nft", "add", "rule", "inet", "bcfw", "input", "tcp", "dport", "3260", "drop"])
        app = boot_until(chain, client, mac, "fw", "failed", hold=2)
    finally:
        srv.run(["nft", "delete", "table", "inet", "bcfw"], check=False)
    reason = app["state_reason"]  # a boot loop, or boot_timeout first on a loaded machine
    assert "no iSCSI login" in reason and "portal" in reason and "fetched its SAN script" in reason
    assert chain.d.wait_job(job_id)["state"] == "failed"


def test_target_deleted_behind_our_back_is_restored(chain):
    client, mac, _job = chain.machine("vanish")
    boot_until(chain, client, mac, "vanish", "active")
    iqn = chain.app("vanish")["params"]["target_iqn"]
    ex = chain.exporter()
    tid = next(t.tid for t in ex.targets() if t.iqn == iqn)
    Runner().run(["tgtadm", "-C", str(chain.port), "--lld", "iscsi", "--op", "delete",
                  "--mode", "target", "--force", "--tid", str(tid)])  # fmt: skip
    deadline = time.monotonic() + 15
    while iqn not in [e.target_iqn for e in ex.list_exports()]:
        assert time.monotonic() < deadline, "target not restored within 15 s"
        time.sleep(0.3)
    assert chain.events("export.restored", "vanish"), "no export.restored event"
    assert chain.app("vanish")["state"] == "active"
    # the restored target serves the machine again (same initiator, same CHAP secret)
    out = san_attempt(chain, client, mac, chain.d.dhcp_boot(client), hold=2)
    assert "Authentication failure" not in out and "failed" not in out.lower(), out


def test_target_that_cannot_be_restored_fails_with_a_storage_fault(chain):
    client, mac, _job = chain.machine("lost")
    boot_until(chain, client, mac, "lost", "active")
    iqn = chain.app("lost")["params"]["target_iqn"]
    ex = chain.exporter()
    clone = next(e.path for e in ex.list_exports() if e.target_iqn == iqn)
    ex.unexport(iqn)
    Path(clone).unlink()  # the volume is gone too: nothing to restore
    app = chain.wait_state("lost", "failed", timeout=15)
    assert "storage fault" in app["state_reason"] and "could not be restored" in app["state_reason"]
    assert chain.events("storage.fault", "lost")
    assert chain.d.cli_json("resource", "show", mac)["state"] == "failed"


def test_no_fetch_within_boot_timeout_fails_with_the_count(chain):
    _client, _mac, job_id = chain.machine("silent")
    job = chain.d.wait_job(job_id, timeout=TIMEOUT + 30)
    assert job["state"] == "failed", job
    reason = chain.app("silent")["state_reason"]
    assert f"within {TIMEOUT} s" in reason and "fetched its SAN script 0 times" in reason, reason
