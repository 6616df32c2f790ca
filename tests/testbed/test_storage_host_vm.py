"""A storage host on a real kernel: LVM snapshots, LIO and tgt exports driven over SSH.

One QEMU storage VM per module (Debian 12 kernel with dm-thin and LIO,
``debian-12-storage`` root file system, see vm-testbed/storagevm.py) on the
test bed's bridge, reached by provisiond's storage code only through
:class:`storage.ssh.SshRunner` with its pinned host key. On it: a volume
group on a virtio disk with a thin pool, a bootable image imported (chunks
streamed over SSH, each sha256-checked on the host) as a classic and as a
thin master, a classic and a thin snapshot, each exported over LIO by the
shipped helper with its ACL and CHAP. Real initiators check the exports from
this machine (libiscsi's ``iscsi-inq``, QEMU's iSCSI driver): the right
initiator and secret log in, a wrong secret or another initiator are
refused, and a write through one export changes neither master nor the other
clone. The same export through tgt (its CHAP secret set through tgtd's
socket, on no command line): a machine SAN-boots from it with iPXE while the
next tests run. Removing exports and snapshots; a host going down and coming
back (StorageService marks it down with the reason, polls, marks it up).

Before any thin pool exists, the unit tests' LVM fixtures' recipe
(tests/testbed/lvmrecord.py) runs on a scratch VG on a second disk: every
committed fixture must be what this lvm2 prints (PROVISIOND_RECORD_LVM=1
rewrites them). LvmBackend's create/clone/delete, a file-backed LIO export
and the configfs portal check (read through the SSH runner) also run here:
this machine's kernel has neither device-mapper nor LIO.

Last, provisiond itself against the same VM: import, ``appliance start`` of
a classic and a thin clone that two machines SAN-boot through its DHCP and
iPXE; each booted guest writes a token into its own disk (the LUN
hot-plugged as a virtio disk through QEMU's iSCSI initiator, same IQN and
CHAP; the marker guest has no initiator of its own), found on its clone and
on neither the master nor the other clone; kill -9 and restart (reconcile: a
lost export comes back, a stale target and an orphaned clone go), stop and
rm. Between import and appliance start, a third machine's real agent
captures its small disk of random bytes through the daemon onto a thin LV
of the storage host: the LV holds it byte for byte and the image's manifest
matches, re-hashed on the host. One storage VM, one daemon, four client
machines in the module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from testbed import Testbed, wait_until

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import storagevm  # noqa: E402

from provisiond import chunks  # noqa: E402
from provisiond.chunks import Manifest  # noqa: E402
from storage.backends import LvmBackend  # noqa: E402
from storage.backends.base import StorageError  # noqa: E402
from storage.exporters import (  # noqa: E402
    CONFIGFS,
    ExporterIdentityError,
    ExportSpec,
    TgtExporter,
    new_chap_secret,
)
from storage.exporters.identity import check_lio_portal, lio_portals  # noqa: E402
from storage.exporters.lio_remote import RemoteLioExporter  # noqa: E402
from storage.images import import_image  # noqa: E402
from storage.ssh import HostKeyMismatch, SshRunner, SshTarget  # noqa: E402
from tests.testbed import lvmrecord  # noqa: E402
from tests.testbed.conftest import unique_ns  # noqa: E402
from tests.testbed.diskimage import build_boot_disk  # noqa: E402
from tests.testbed.vmlab import cli  # noqa: E402

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(900)]  # rootfs build + VM boot
SUBNET = "10.78.0"
HOST = f"{SUBNET}.50"
VG, POOL = "pvsan", "pool0"
GiB = 1 << 30
PREFIX = "iqn.2025-01.test.storage"
MARKER = "STORAGE-SAN-OK"
SIZE_MIB = 24  # the boot disk: kernel + marker initrd; small, since the TCG guest hashes it
IPXE_LKRN = Path("/usr/lib/ipxe/ipxe.lkrn")
LVS = ["lvs", "--reportformat", "json", "-o", "lv_name,lv_size,origin,pool_lv,lv_attr",
       "--units", "b", "--nosuffix", VG]  # fmt: skip


def keypair(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f",
                    str(path)], check=True, capture_output=True)  # fmt: skip
    return path


class Host:
    """The booted storage VM and the ways to reach it."""

    def __init__(self, tb: Testbed, vm, hostkey: Path, client: Path) -> None:
        self.tb, self.vm, self.hostkey, self.client = tb, vm, hostkey, client
        self.host_key_line = Path(f"{hostkey}.pub").read_text().strip()

    def target(self, **kw) -> SshTarget:
        return SshTarget(HOST, self.client, **{"host_key": self.host_key_line, **kw})

    def runner(self, **kw) -> SshRunner:
        return SshRunner(self.target(**kw), connect=storagevm.ns_connect(self.tb.ns))


@pytest.fixture(scope="module")
def storage_host(testbed_ready, tmp_path_factory):
    from provisiond import rootfs

    missing = [t for t in ("mmdebstrap", "mkfs.ext4", "iscsi-inq", "qemu-io", "ssh-keygen")
               if subprocess.run(["which", t], capture_output=True).returncode]  # fmt: skip
    if missing:
        pytest.skip(reason=f"storage VM needs {', '.join(missing)} (make deps)")
    ref = rootfs.build("debian-12-storage", say=lambda line: print(line, flush=True))
    assert ref.size > 0
    files = storagevm.prepare(rootfs.archive_path("debian-12-storage"))
    work = tmp_path_factory.mktemp("storagehost")
    hostkey, client = keypair(work / "hostkey"), keypair(work / "client")
    with Testbed(work / "tb", ns_name=unique_ns(), subnet=SUBNET) as tb:
        # /dev/vdb: the scenario's VG; /dev/vdc: the LVM fixtures' scratch VG (lvmrecord.py)
        vm = storagevm.boot(tb, files, "storage", "52:54:00:78:00:50", f"{HOST}/24", hostkey,
                            Path(f"{client}.pub"), data_disks=("4G", "1G"))  # fmt: skip
        t0 = time.monotonic()
        m = vm.wait_for(storagevm.READY, timeout=300)
        assert m.group(1) == "ready", vm.tail()
        print(f"storage VM ready in {time.monotonic() - t0:.1f} s", flush=True)
        yield Host(tb, vm, hostkey, client)


@pytest.fixture(scope="module")
def ssh(storage_host) -> SshRunner:
    runner = storage_host.runner()
    yield runner
    runner.close()


def sha_on_host(ssh: SshRunner, path: str) -> str:
    return ssh.run(["sha256sum", path]).stdout.split()[0]


def test_ssh_host_key_is_pinned(storage_host, ssh, tmp_path):
    assert ssh.run(["uname", "-r"]).stdout.strip().endswith("-amd64")
    # a wrong configured key: refused before any command runs
    other = Path(f"{keypair(tmp_path / 'other')}.pub").read_text().strip()
    wrong = storage_host.runner(host_key=other)
    with pytest.raises(HostKeyMismatch, match="refusing to run anything"):
        wrong.run(["touch", "/run/pinning-breached"])
    assert ssh.run(["ls", "/run/pinning-breached"], check=False).rc != 0
    # no configured key: pinned on first use, then held to it
    pins = tmp_path / "storage-hostkeys.json"
    tofu = storage_host.runner(host_key="", pins_path=pins)
    assert tofu.run(["true"]).rc == 0
    tofu.close()
    assert json.loads(pins.read_text()) == {
        f"{HOST}:22": " ".join(storage_host.host_key_line.split()[:2])
    }
    pins.write_text(json.dumps({f"{HOST}:22": other}))
    with pytest.raises(HostKeyMismatch, match="pinned in"):
        storage_host.runner(host_key="", pins_path=pins).run(["true"])


@pytest.fixture(scope="module")
def lvm_fixtures(ssh):
    """The unit tests' LVM fixtures' recipe, run on this VM before any thin pool exists.

    PROVISIOND_RECORD_LVM=1 rewrites tests/unit/fixtures/storage/lvm-vm/ from it.
    """
    record = bool(os.environ.get("PROVISIOND_RECORD_LVM"))
    return lvmrecord.run_recipe(ssh, "/dev/vdc", record=record)


def test_lvm_fixtures_are_what_lvm2_on_the_storage_vm_says(lvm_fixtures):
    """Every committed LVM fixture is, byte for byte, what this VM's lvm2 prints for it."""
    if os.environ.get("PROVISIOND_RECORD_LVM"):
        pytest.skip(reason="PROVISIOND_RECORD_LVM set: fixtures were just (re)written")
    assert len(lvm_fixtures) == 8
    for name, live, committed in lvm_fixtures:
        assert live == committed, (
            f"{name} differs from lvm2 on the storage VM; re-record with "
            f"PROVISIOND_RECORD_LVM=1 pytest {__file__} -k fixtures\nlive:\n{live}"
        )


@pytest.fixture(scope="module")
def volumes(storage_host, ssh, tmp_path_factory, lvm_fixtures):
    """VG + thin pool on /dev/vdb, the boot disk imported as classic and thin masters."""
    classic = LvmBackend(VG, runner=ssh)
    thin = LvmBackend(VG, thin_pool=POOL, runner=ssh)
    done = thin.ensure_vg(("/dev/vdb",), 1 * GiB)
    assert done == [f"created volume group {VG} on /dev/vdb", f"created thin pool {VG}/{POOL}"]
    assert thin.ensure_vg(("/dev/vdb",), 1 * GiB) == []  # idempotent
    classic.check()
    thin.check()
    work = tmp_path_factory.mktemp("disk")
    kernel = sorted(Path("/boot").glob("vmlinuz-*"))[-1]
    disk = build_boot_disk(work / "master.raw", kernel, MARKER, "probe", size_mib=SIZE_MIB,
                           probe=True)  # fmt: skip
    want = hashlib.sha256(disk.read_bytes()).hexdigest()
    for backend, name in ((classic, "master-c"), (thin, "master-t")):
        got = import_image(backend, name, str(disk))
        assert got.sha256 == want and got.volume.path == f"/dev/{VG}/{name}"
    return classic, thin, want


def test_lvm_classic_and_thin_snapshots_on_a_real_kernel(ssh, volumes):
    classic, thin, want = volumes
    c = classic.clone("master-c", "app-c")
    t = thin.clone("master-t", "app-t")
    assert (c.origin, t.origin) == ("master-c", "master-t")
    report = ssh.run(LVS).stdout
    if os.environ.get("PROVISIOND_RECORD_LVS"):  # tests/unit/fixtures/storage/lvs-vm.json
        Path(os.environ["PROVISIOND_RECORD_LVS"]).write_text(report)
    rows = {r["lv_name"]: r for r in json.loads(report)["report"][0]["lv"]}
    assert rows["app-c"]["lv_attr"][0] == "s" and rows["app-c"]["origin"] == "master-c"
    assert rows["master-c"]["lv_attr"][0] == "o"
    assert rows["app-t"]["lv_attr"][0] == "V" and rows["app-t"]["pool_lv"] == POOL
    assert rows["app-t"]["origin"] == "master-t"
    for name in ("app-c", "app-t", "master-c", "master-t"):
        got = ssh.run(["sh", "-c", f"head -c {SIZE_MIB << 20} /dev/{VG}/{name} | sha256sum"])
        assert got.stdout[:64] == want, name
    assert {v.name for v in thin.list()} >= {"app-c", "app-t", "master-c", "master-t"}


def spec(name: str, secret: str) -> ExportSpec:
    return ExportSpec(f"{PREFIX}:{name}", f"/dev/{VG}/{name}", f"{PREFIX}:init-{name}",
                      name, secret)  # fmt: skip


SECRETS = {"app-c": "ClassicSecret016", "app-t": "ThinSecret000016"}


@pytest.fixture(scope="module")
def exports(ssh, volumes):
    lio = RemoteLioExporter(ssh, HOST, host="storage VM")
    lio.check()
    specs = [spec(n, s) for n, s in SECRETS.items()]
    for s in specs:
        lio.export(s)
    return lio, specs


def inq(tb: Testbed, initiator: str, user: str, secret: str, target: str):
    url = f"iscsi://{user}%{secret}@{HOST}/{target}/0"
    return tb.run_in_ns(["iscsi-inq", "-i", initiator, url], check=False, timeout=60)


def test_lio_exports_with_acl_and_chap(storage_host, exports, ssh):
    lio, specs = exports
    listed = {s.target_iqn: s for s in lio.list_exports()}
    for s in specs:
        got = listed[s.target_iqn]
        assert got.key() == s.with_lun(0).key() and got.chap_secret is None
    tpg = f"/sys/kernel/config/target/iscsi/{specs[0].target_iqn}/tpgt_1/attrib"
    attrs = ssh.run(["cat", f"{tpg}/authentication", f"{tpg}/generate_node_acls"]).stdout.split()
    assert attrs == ["1", "0"]
    tb = storage_host.tb
    s = specs[0]
    ok = inq(tb, s.initiator_iqn, s.chap_user, s.chap_secret, s.target_iqn)
    assert ok.returncode == 0 and "LIO-ORG" in ok.stdout, ok.stdout + ok.stderr
    bad_secret = inq(tb, s.initiator_iqn, s.chap_user, "WrongSecret00016", s.target_iqn)
    assert bad_secret.returncode != 0
    other_initiator = inq(tb, specs[1].initiator_iqn, s.chap_user, s.chap_secret, s.target_iqn)
    assert other_initiator.returncode != 0


def test_lio_target_portal_is_checked_in_configfs(exports, ssh):
    """check_lio_portal reads the storage VM's configfs through the SSH runner (was an
    interop test that skipped here: this machine's kernel has no LIO)."""
    _, specs = exports
    iqn = specs[1].target_iqn
    assert lio_portals(CONFIGFS, iqn, ssh) == (f"{HOST}:3260",)
    check_lio_portal(CONFIGFS, iqn, f"{HOST}:3260", runner=ssh)
    with pytest.raises(
        ExporterIdentityError, match=rf"listens on {HOST}:3260, not {SUBNET}\.2:3260"
    ):
        check_lio_portal(CONFIGFS, iqn, f"{SUBNET}.2:3260", runner=ssh)
    check_lio_portal(CONFIGFS, f"{PREFIX}:absent", f"{SUBNET}.2:3260", runner=ssh)  # none: ok


def test_lio_export_roundtrip_of_a_file(ssh):
    """A file-backed (fileio) LIO export on the VM's kernel: export, listed, unexport, gone."""
    lio = RemoteLioExporter(ssh, HOST, host="storage VM")
    img = "/var/tmp/lio-roundtrip.img"
    ssh.run(["truncate", "-s", "1M", img])
    iqn = f"{PREFIX}:lio-roundtrip"
    s = ExportSpec(iqn, img, f"{PREFIX}:init-roundtrip", "u", new_chap_secret())
    try:
        lio.export(s)
        assert [x.key() for x in lio.list_exports() if x.target_iqn == iqn] == [s.with_lun(0).key()]
        udev = ssh.run(["sh", "-c", f"cat {CONFIGFS}/core/fileio_*/*/udev_path"]).stdout
        assert img in udev.split()
    finally:
        lio.unexport(iqn)
    gone = (
        f"test ! -e {CONFIGFS}/iscsi/{iqn} && ! grep -qs {img} {CONFIGFS}/core/fileio_*/*/udev_path"
    )
    assert ssh.run(["sh", "-c", gone], check=False).rc == 0  # target and backstore


def test_lvm_create_clone_delete(ssh, volumes):
    """Create, classic clone and delete through LvmBackend on the VM's real LVM."""
    lvm = LvmBackend(VG, runner=ssh)
    golden = lvm.create("pvtest-golden", 64 << 20)
    try:
        clone = lvm.clone("pvtest-golden", "pvtest-clone")
        assert clone.origin == "pvtest-golden"
        assert ssh.run(["test", "-b", clone.path], check=False).rc == 0
        assert {"pvtest-golden", "pvtest-clone"} <= {v.name for v in lvm.list()}
        assert lv_rows(ssh)["pvtest-clone"]["lv_attr"][0] == "s"
    finally:
        lvm.delete("pvtest-clone")
        lvm.delete(golden.name)
    assert lvm.get("pvtest-clone") is None and lvm.get("pvtest-golden") is None


def test_write_through_one_export_changes_neither_master_nor_other(storage_host, exports, ssh,
                                                                   volumes):  # fmt: skip
    _, specs = exports
    _, _, want = volumes
    s = next(x for x in specs if x.chap_user == "app-t")
    opts = (f"driver=iscsi,transport=tcp,portal={HOST},target={s.target_iqn},lun=0,"
            f"user={s.chap_user},password-secret=sec0,"
            f"initiator-name={s.initiator_iqn}")  # fmt: skip
    run = storage_host.tb.run_in_ns(
        ["qemu-io", "--object", f"secret,id=sec0,data={s.chap_secret}", "--image-opts", opts,
         "-c", "write -P 0xab 20M 64k", "-c", "flush"], check=False, timeout=120)  # fmt: skip
    assert run.returncode == 0 and "wrote 65536" in run.stdout, run.stdout + run.stderr
    head = f"head -c {SIZE_MIB << 20} /dev/{VG}/{{}} | sha256sum"
    got = {n: ssh.run(["sh", "-c", head.format(n)]).stdout[:64]
           for n in ("app-t", "app-c", "master-t", "master-c")}  # fmt: skip
    assert got["app-t"] != want
    assert got["app-c"] == got["master-t"] == got["master-c"] == want
    # the block really holds what was written, read back on the host
    back = ssh.run(["sh", "-c", f"dd if=/dev/{VG}/app-t bs=64k skip=320 count=1 status=none"
                    " | sha256sum"]).stdout.split()[0]  # fmt: skip
    assert back == hashlib.sha256(b"\xab" * 65536).hexdigest()


def ipxe_script(s: ExportSpec, ip: str, port: int = 3260) -> str:
    return (
        "#!ipxe\n"
        f"set net0/ip {ip}\nset net0/netmask 255.255.255.0\nifopen net0\n"
        f"set initiator-iqn {s.initiator_iqn}\nset username {s.chap_user}\n"
        f"set password {s.chap_secret}\n"
        f"echo SAN boot of {s.target_iqn}\n"
        f"sanboot iscsi:{HOST}::{port}:{s.lun}:{s.target_iqn}\n"
    )


TGT_PORT = 3261  # LIO holds 3260 on the host's address


@pytest.fixture(scope="module")
def tgt(ssh):
    """tgtd on the storage VM (portal HOST:3261), driven by tgtadm over SSH; stopped at the end."""
    ssh.run(["sh", "-c", f"setsid tgtd --iscsi portal={HOST}:{TGT_PORT} "
             "</dev/null >/dev/null 2>&1 &"])  # fmt: skip
    wait_until(lambda: ssh.run(["tgtadm", "--lld", "iscsi", "--op", "show", "--mode", "target"],
                               check=False).rc == 0, 30, interval=0.5)  # fmt: skip
    try:
        yield TgtExporter(ssh)
    finally:
        ssh.run(["tgtadm", "--op", "delete", "--mode", "system"], check=False)


TGT_SECRET = "TgtSecret0000016"


def test_tgt_exporter_on_the_same_host(storage_host, ssh, volumes, tgt, caplog):
    """The same export through tgt (tgtadm over SSH) on the storage VM: ACL + CHAP, LUN 1.

    The CHAP secret reaches tgtd through its socket (storage.exporters.tgt_ipc): no command
    run on the host holds it, and the SSH runner's log does not either.
    """
    _, thin, _ = volumes
    tgt.check()
    thin.clone("master-t", "app-tgt")
    s = spec("app-tgt", TGT_SECRET)
    ran: list[list[str]] = []
    recording = Recording(storage_host.target(), connect=storagevm.ns_connect(storage_host.tb.ns))
    recording.ran = ran
    caplog.set_level(logging.DEBUG, logger="provisiond.storage")
    try:
        TgtExporter(recording).export(s)
    finally:
        recording.close()
    assert any("--mode" in argv and "account" in argv for argv in ran), ran  # it was recorded
    assert not any(TGT_SECRET in arg for argv in ran for arg in argv)
    assert caplog.records and TGT_SECRET not in caplog.text
    assert [x.key() for x in tgt.list_exports()] == [s.with_lun(1).key()]
    tb = storage_host.tb
    url = f"iscsi://{s.chap_user}%{{}}@{HOST}:{TGT_PORT}/{s.target_iqn}/1"
    ok = tb.run_in_ns(["iscsi-inq", "-i", s.initiator_iqn, url.format(s.chap_secret)],
                      check=False, timeout=60)  # fmt: skip
    assert ok.returncode == 0 and "IET" in ok.stdout, ok.stdout + ok.stderr
    bad = tb.run_in_ns(["iscsi-inq", "-i", s.initiator_iqn, url.format("WrongSecret00016")],
                       check=False, timeout=60)  # fmt: skip
    assert bad.returncode != 0


class Recording(SshRunner):
    """An SshRunner that records every argv it runs on the host."""

    ran: list[list[str]]

    def run(self, argv, **kw):
        self.ran.append([str(a) for a in argv])
        return super().run(argv, **kw)


def qmp(path: Path, *calls: tuple[str, dict]) -> None:
    """Run QMP commands in order (events skipped); an error answer fails the test."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(60)
        sock.connect(str(path))
        rf = sock.makefile("rb")
        json.loads(rf.readline())  # greeting
        for cmd, args in (("qmp_capabilities", {}), *calls):
            sock.sendall(json.dumps({"execute": cmd, "arguments": args}).encode())
            while "event" in (msg := json.loads(rf.readline())):
                pass
            assert "return" in msg, f"QMP {cmd}: {msg}"


def attach_over_iscsi(vm, s: ExportSpec, port: int) -> None:
    """Hot-plug the machine's own LUN as a virtio disk (QEMU's iSCSI initiator, same IQN + CHAP)."""
    qmp(
        vm.qmp_path,
        ("object-add", {"qom-type": "secret", "id": "chap0", "data": s.chap_secret}),
        (
            "blockdev-add",
            {
                "driver": "iscsi",
                "node-name": "own",
                "transport": "tcp",
                "portal": f"{HOST}:{port}",
                "target": s.target_iqn,
                "lun": s.lun,
                "user": s.chap_user,
                "password-secret": "chap0",
                "initiator-name": s.initiator_iqn,
            },
        ),
        ("device_add", {"driver": "virtio-blk-pci", "drive": "own", "id": "owndisk"}),
    )


PROBE = 22 << 20  # tests/testbed/diskimage.PROBE_OFFSET: where a probe guest writes its token
TOKEN = r"(GUEST-WROTE [0-9a-f-]{36})"


def read_probe(ssh: SshRunner, *names: str) -> dict[str, str]:
    # LIO writes below the host's page cache: drop the LV's cached pages before reading
    read = (f"blockdev --flushbufs /dev/{VG}/{{0}} && "
            f"dd if=/dev/{VG}/{{0}} bs=1 skip={PROBE} count=49 status=none")  # fmt: skip
    return {n: ssh.run(["sh", "-c", read.format(n)]).stdout for n in names}


@pytest.fixture(scope="module")
def tgt_machine(storage_host, tgt):
    """A machine SAN-booting app-tgt from tgt; it boots while the next tests run."""
    if not IPXE_LKRN.is_file():
        pytest.skip(reason=f"{IPXE_LKRN} missing (apt-get install ipxe)")
    tb = storage_host.tb
    s = spec("app-tgt", TGT_SECRET).with_lun(1)
    script = tb.workdir / "san-tgt.ipxe"
    script.write_text(ipxe_script(s, f"{SUBNET}.61", TGT_PORT))
    vm = tb.boot_vm("san-tgt", "52:54:00:78:00:61", kernel=str(IPXE_LKRN), initrd=str(script),
                    append="", qmp=True)  # fmt: skip
    yield vm, s
    if vm in tb.vms:  # its test stops it once checked
        vm.kill()
        tb.vms.remove(vm)


def test_tgt_machine_starts_booting(tgt_machine):
    vm, _ = tgt_machine
    vm.wait_for(r"SAN boot of", 120)


def test_unexport_and_remove_snapshot(ssh, exports, volumes):
    lio, specs = exports
    classic, _, _ = volumes
    s = next(x for x in specs if x.chap_user == "app-c")
    lio.unexport(s.target_iqn)
    classic.delete("app-c")
    assert s.target_iqn not in {x.target_iqn for x in lio.list_exports()}
    assert classic.get("app-c") is None
    names = {r["lv_name"] for r in json.loads(ssh.run(LVS).stdout)["report"][0]["lv"]}
    assert "app-c" not in names and "master-c" in names
    targets = ssh.run(["ls", "/sys/kernel/config/target/iscsi"]).stdout.split()
    assert s.target_iqn not in targets


def test_machine_san_boots_from_tgt_and_writes_only_its_own_clone(storage_host, ssh, tgt,
                                                                   tgt_machine):  # fmt: skip
    """tgt on the storage VM serves a SAN boot too: the machine's Linux runs from app-tgt
    (its initiator logged in to that target only), then writes a token into its own disk,
    found on app-tgt and not on its master."""
    vm, s = tgt_machine
    seen: set[str] = set()

    def booted() -> bool:
        seen.update(x.initiator_iqn for x in tgt.sessions(s.target_iqn))
        return MARKER in vm.console_text()

    wait_until(booted, 300, interval=0.5)
    vm.wait_for(rf"{MARKER} probe", 5)
    assert seen == {s.initiator_iqn}
    attach_over_iscsi(vm, s, TGT_PORT)
    token = vm.wait_for(TOKEN, 120).group(1)
    on = read_probe(ssh, "app-tgt", "master-t", "master-c", "app-t")
    assert on["app-tgt"].startswith(token), on
    assert not any(token in on[n] for n in ("master-t", "master-c", "app-t")), on
    vm.kill()
    storage_host.tb.vms.remove(vm)


def test_tgt_unexport_and_remove_snapshot(ssh, tgt, volumes):
    _, thin, _ = volumes
    tgt.unexport(f"{PREFIX}:app-tgt")  # --force: the machine may still be logged in
    assert tgt.list_exports() == []
    assert "app-tgt" not in ssh.run(["tgtadm", "--lld", "iscsi", "--op", "show", "--mode",
                                     "account"]).stdout  # fmt: skip
    thin.delete("app-tgt")
    assert thin.get("app-tgt") is None


def test_storage_host_down_and_back(storage_host, volumes, tmp_path):
    """StorageService marks an unreachable host down with the reason and polls it back up."""
    from provisiond import config as configmod
    from provisiond.db import Database
    from provisiond.model import Storage
    from provisiond.storages import StorageManager, StorageService

    h = storage_host
    cfg = configmod.parse(
        f'address = "{SUBNET}.1"\nstate_dir = "{tmp_path}"\n'
        f'database_url = "sqlite:///{tmp_path}/db.sqlite"\n'
        f'[[storage]]\nname = "san"\nbackend = "lvm"\npath = "{VG}"\nthin_pool = "{POOL}"\n'
        f'host = "{HOST}"\nkey = "{h.client}"\nhost_key = "{h.host_key_line}"\n'
    )
    db = Database(cfg.database_url)
    db.migrate()
    manager = StorageManager(cfg)
    manager._ssh["san"] = SshRunner(SshTarget(HOST, h.client, host_key=h.host_key_line,
                                              connect_timeout=3),
                                    connect=storagevm.ns_connect(h.tb.ns))  # fmt: skip
    service = StorageService(cfg, db, manager)
    service.poll_interval = 1.0

    def state() -> tuple[str | None, str | None]:
        with db.transaction() as s:
            row = s.query(Storage).filter_by(name="san").one()
            return row.host_state, row.host_reason

    tap = h.vm.spec.tap
    thin = LvmBackend(VG, thin_pool=POOL, runner=manager._ssh["san"])
    thin.clone("master-t", "app-orphan")  # a clone the daemon died before recording
    service.start()
    try:
        assert state() == ("up", None)
        names = {v.name for v in thin.list()}
        assert "app-orphan" not in names and {"master-t", "master-c"} <= names
        assert RemoteLioExporter(manager._ssh["san"], HOST).list_exports() == []  # none wanted
        assert service.exporter_for("san") is not None
        h.tb.run_in_ns(["ip", "link", "set", tap, "down"])
        manager._ssh["san"].close()
        assert not service.connect_host("san")
        st, reason = state()
        assert st == "down" and HOST in reason and "cannot connect" in reason, reason
        assert service.host_down_reason("san") == reason
        service._poll("san")
        h.tb.run_in_ns(["ip", "link", "set", tap, "up"])
        wait_until(lambda: state() == ("up", None), 60, interval=0.5)
        assert service.host_down_reason("san") is None
    finally:
        h.tb.run_in_ns(["ip", "link", "set", tap, "up"], check=False)
        service.stop()


MACS = ("52:54:00:78:00:71", "52:54:00:78:00:72")
# an appliance's state after its guest booted, a reconcile: seconds, not minutes, on a quiet
# machine; on a machine loaded 20-30 (2 cores) a failed first iPXE attempt plus the storage
# VM's slow helper calls took longer than 120 s (before and after the module was trimmed)
SETTLE_S = 300


def appliance_export(tb: Testbed, name: str) -> ExportSpec:
    """The export provisiond made for appliance ``name`` (from its database)."""
    import sqlite3

    db = tb.workdir / "state" / "provisiond.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
        (params,) = con.execute("SELECT params FROM appliance WHERE name = ?", (name,)).fetchone()
    p = json.loads(params)
    from provisiond import chapsecret  # the secret is sealed with the daemon's server key

    secret = chapsecret.secret_of(tb.workdir / "state", p)
    return ExportSpec(p["target_iqn"], "", p["initiator_iqn"], p["chap_user"], secret,
                      int(p["lun"]))  # fmt: skip


CAP_MAC = "52:54:00:78:00:73"
CAP_MIB = 12  # the captured disk: random bytes, so every chunk travels


def image_manifest(tb: Testbed, name: str) -> Manifest:
    """The chunk manifest provisiond recorded for image ``name`` (from its database)."""
    import sqlite3

    db = tb.workdir / "state" / "provisiond.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
        (text,) = con.execute("SELECT manifest FROM image WHERE name = ?", (name,)).fetchone()
    return Manifest.from_json(json.loads(text))


def check_capture_onto_storage_host(tb: Testbed, ssh: SshRunner, source: Path) -> None:
    """The real agent on machine CAP_MAC sends its disk through the daemon (tcp transport)
    onto a thin LV of the storage VM: the LV holds the disk byte for byte and the image's
    manifest is the source's, chunk for chunk, also re-hashed on the host."""
    t0 = time.monotonic()
    out = cli(tb, "image", "capture", CAP_MAC, "--disk", "/dev/vda", "--name", "cap",
              "--storage", "sant", "--workers", "2")  # fmt: skip
    print(f"capture of {CAP_MIB} MiB onto the storage VM: {time.monotonic() - t0:.1f} s",
          flush=True)  # fmt: skip
    want = hashlib.sha256(source.read_bytes()).hexdigest()

    def shown_sha() -> str | None:  # filled in after the ready image (provisiond/imagedigest)
        return json.loads(cli(tb, "image", "show", "cap", "--json"))["sha256"]

    wait_until(shown_sha, 120, interval=0.5)
    assert shown_sha() == want, out
    lv = f"/dev/{VG}/image-cap"
    assert lv_rows(ssh)["image-cap"]["pool_lv"] == POOL
    assert ssh.run(["sh", "-c", f"head -c {CAP_MIB << 20} {lv} | sha256sum"]).stdout[:64] == want
    m = image_manifest(tb, "cap")
    with open(source, "rb") as fh:
        scanned = chunks.scan(fh, source.stat().st_size)
    assert (m.size, m.chunk_size, m.chunks) == (scanned.size, scanned.chunk_size, scanned.chunks)
    assert len(m.chunks) == m.count == -(-(CAP_MIB << 20) // m.chunk_size)
    script = "; ".join(f"dd if={lv} bs={m.chunk_size} skip={c.index} count=1 status=none "
                       "| sha256sum" for c in m.chunks)  # fmt: skip
    on_host = [line[:64] for line in ssh.run(["sh", "-c", script]).stdout.splitlines()]
    assert on_host == [c.sha256 for c in m.chunks]


def lv_rows(ssh: SshRunner) -> dict[str, dict]:
    return {r["lv_name"]: r for r in json.loads(ssh.run(LVS).stdout)["report"][0]["lv"]}


def test_daemon_sanboots_a_classic_and_a_thin_clone_from_the_storage_host(
    storage_host, ssh, boot_assets, tmp_path
):
    """provisiond's own jobs: import, appliance start (snapshot + LIO export + SAN boot),
    kill -9 and restart (reconcile: lost export back, stale target and orphan clone gone),
    appliance stop + rm (export and snapshot removed)."""
    h = storage_host
    tb = h.tb
    # alive_timeout: the TCG storage VM's sshd can take over 10 s to open a channel on a
    # machine loaded 15 (2 cores); a host that really vanishes is tests/interop's business
    host = (f'backend = "lvm"\npath = "{VG}"\nhost = "{HOST}"\nkey = "{h.client}"\n'
            f'host_key = "{h.host_key_line}"\ndevices = ["/dev/vdb"]\n'
            "alive_timeout = 60\n")  # fmt: skip
    config = tb.provisiond_config(heartbeat_interval=2) + (
        "\n[iscsi]\nboot_timeout = 240\n"
        f'\n[[storage]]\nname = "sanc"\n{host}'
        f'\n[[storage]]\nname = "sant"\n{host}thin_pool = "{POOL}"\nthin_pool_size = {GiB}\n'
        f'\n[images]\nimport_dirs = ["{tmp_path}"]\n'
    )
    lio = RemoteLioExporter(ssh, HOST)
    kernel = sorted(Path("/boot").glob("vmlinuz-*"))[-1]
    disk = build_boot_disk(tmp_path / "daemon.raw", kernel, MARKER, "daemon", size_mib=SIZE_MIB,
                           probe=True)  # fmt: skip
    tb.start_provisiond(config)

    def exported() -> list[str]:
        return sorted(x.target_iqn for x in lio.list_exports())

    def daemon_log() -> str:
        return (tb.workdir / "provisiond.log").read_text(errors="replace")[-3000:]

    def settle(predicate, what) -> None:
        def now():  # a target the daemon removes while this lists configfs: look again
            try:
                return predicate()
            except StorageError:
                return False

        try:
            wait_until(now, SETTLE_S, interval=1)
        except TimeoutError:
            what = what() if callable(what) else what
            pytest.fail(f"not within {SETTLE_S} s: {what}\ndaemon log:\n{daemon_log()}")

    # start-up reconcile (after /healthz answers): nothing is wanted yet
    settle(lambda: exported() == [], "no start-up reconcile")
    cli(tb, "kernel", "add", "agent", "--kernel", str(boot_assets.kernel),
        "--initrd", str(boot_assets.initrd), "--default")  # fmt: skip
    # the machines PXE-boot into the agent while the images are imported; a third one, with
    # a small local disk of random bytes, is captured onto the storage host (real agent only)
    vms = [tb.boot_vm(f"app{i}", mac, reboot=True, qmp=True) for i, mac in enumerate(MACS)]
    cap_disk = tmp_path / "capture-source.raw"
    cap_disk.write_bytes(os.urandom(CAP_MIB << 20))
    cap_vm = None
    if boot_assets.real_agent:
        cap_vm = tb.boot_vm("cap", CAP_MAC, reboot=True,
                            extra=("-drive", f"file={cap_disk},format=raw,if=virtio"))  # fmt: skip
    else:
        print("capture onto the storage host not run: initrd/build.sh failed (the throwaway "
              "initrd has no capture command)", flush=True)  # fmt: skip
    for storage in ("sanc", "sant"):
        out = cli(tb, "image", "import", str(disk), "--name", f"img-{storage}",
                  "--storage", storage)  # fmt: skip
        assert hashlib.sha256(disk.read_bytes()).hexdigest() in out
    for mac in (*MACS, *((CAP_MAC,) if cap_vm else ())):
        wait_until(lambda m=mac: tb.resource_state(m) == "idle", 180, interval=0.5)
    if cap_vm is not None:
        check_capture_onto_storage_host(tb, ssh, cap_disk)
        cap_vm.kill()
        tb.vms.remove(cap_vm)
    for i, (mac, storage) in enumerate(zip(MACS, ("sanc", "sant"), strict=True)):
        cli(tb, "appliance", "create", "--resource", mac, "--image", f"img-{storage}",
            "--mode", "sanboot", "--name", f"san{i}")  # fmt: skip
        cli(tb, "appliance", "start", f"san{i}")
    for vm in vms:
        vm.wait_for(rf"{MARKER} daemon", 300)
    for i in range(2):
        settle(lambda n=i: json.loads(cli(tb, "appliance", "show", f"san{n}", "--json"))["state"]
               == "active", lambda n=i: cli(tb, "appliance", "show", f"san{n}"))  # fmt: skip
        app = json.loads(cli(tb, "appliance", "show", f"san{i}", "--json"))
        assert "iSCSI login of" in app["state_reason"], app
    rows = lv_rows(ssh)
    assert rows["app-san0"]["lv_attr"][0] == "s" and rows["app-san0"]["origin"] == "image-img-sanc"
    assert rows["app-san1"]["lv_attr"][0] == "V" and rows["app-san1"]["pool_lv"] == POOL
    targets = exported()
    assert len(targets) == 2

    # each SAN-booted guest writes a token into its own disk: found on its clone only
    for i, vm in enumerate(vms):
        attach_over_iscsi(vm, appliance_export(tb, f"san{i}"), 3260)
    tokens = [vm.wait_for(TOKEN, 120).group(1) for vm in vms]
    on = read_probe(ssh, "app-san0", "app-san1", "image-img-sanc", "image-img-sant")
    assert on["app-san0"].startswith(tokens[0]) and on["app-san1"].startswith(tokens[1]), on
    assert tokens[1] not in on["app-san0"] and tokens[0] not in on["app-san1"], on
    assert "GUEST-WROTE" not in on["image-img-sanc"] + on["image-img-sant"], on

    # kill -9; meanwhile one export is lost and a stale target and an orphan clone appear
    pid = int((tb.run_dir / "provisiond.pid").read_text())
    os.kill(pid, 9)
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or
               "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3], 10)  # fmt: skip
    lio.unexport(targets[1])
    LvmBackend(VG, thin_pool=POOL, runner=ssh).clone("image-img-sant", "app-ghost")
    lio.export(spec("app-ghost", "GhostSecret00016"))
    tb.start_provisiond(config)
    settle(lambda: exported() == targets and "app-ghost" not in lv_rows(ssh), "no reconcile")
    assert "removed orphaned clone app-ghost" in daemon_log()

    cli(tb, "appliance", "stop", "san1", "--wait")
    cli(tb, "appliance", "rm", "san1")
    assert exported() == targets[:1]
    rows = lv_rows(ssh)
    assert "app-san1" not in rows and "app-san0" in rows and "image-img-sant" in rows
    tb.stop_daemon("provisiond")
    for vm in vms:
        vm.kill()
        tb.vms.remove(vm)
