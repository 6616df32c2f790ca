"""First-write penalty timed inside a SAN-booted machine, over its own iSCSI initiator.

Run as root: ``.venv/bin/python bench/clone/bench_first_write.py [--runs 3]``.

Issue 16 asks for the first-write penalty of a classic snapshot against a
thin one as "a sequential write of 256 MiB into the clone, timed in the
SAN-booted VM". This bench does exactly that:

1. Boots the test bed's storage VM (vm-testbed/storagevm.py: Debian 12,
   LVM with a thin pool, LIO) and makes a classic and a thin 1 GiB master,
   the first 512 MiB random data (the region written later is provisioned
   and shared with the master).
2. For each of ``--runs`` runs, one fresh volume of each kind: a classic
   snapshot of the classic master (``LvmBackend.clone``: ``lvcreate -s -L``),
   a thin snapshot of the thin master (``lvcreate -s -kn``), and a plain
   linear LV (the baseline). Each is exported over LIO
   (``RemoteLioExporter``, the shipped helper) with an ACL for the guest's
   initiator IQN and its own CHAP user and secret.
3. A client machine SAN-boots (iPXE ``sanboot``, as in
   tests/testbed/test_storage_host_vm.py) from its own boot LUN on the same
   LIO. The boot disk holds the Debian kernel and an initramfs with
   open-iscsi's ``iscsistart``, the kernel's ``iscsi_tcp`` / ``iscsi_ibft``
   / ``sd_mod`` modules and coreutils ``dd`` / ``date``. Its init logs in
   to the boot LUN again from iPXE's iBFT (``iscsistart -b``: the guest
   kernel's own initiator), then, in the interleaved order of
   :func:`firstwrite.plan`, logs in to each measured target (``iscsistart``
   with the target, IQN and CHAP), finds its ``sdX`` through sysfs and runs
   ``dd if=/dev/zero of=/dev/sdX bs=1M count=256 oflag=direct`` with
   ``date +%s.%N`` around it, printing ``FWBENCH result ...`` on the serial
   console. The host only reads the console.

``FWBENCH_DEBUG=1`` in the environment: when the iBFT login fails, the
guest prints its modules, addresses and an ``iscsistart -d 8`` trace.

Prints median and range per kind and the ratios classic / plain, thin /
plain and classic / thin. Bounded: the storage VM gets 300 s to come up, the
guest 300 s to boot and 240 s per write; the test bed (VMs, netns) is always
removed.
"""

from __future__ import annotations

import argparse
import gzip
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "vm-testbed"), str(Path(__file__).resolve().parent)]

import firstwrite  # noqa: E402
import storagevm  # noqa: E402
from testbed import Testbed, wait_until  # noqa: E402

from provisiond import rootfs  # noqa: E402
from storage.backends import LvmBackend  # noqa: E402
from storage.exporters import ExportSpec  # noqa: E402
from storage.exporters.lio_remote import RemoteLioExporter  # noqa: E402
from storage.images import import_image  # noqa: E402
from storage.ssh import SshRunner, SshTarget  # noqa: E402
from tests.testbed.diskimage import PART_START, build_boot_disk, kernel_modules  # noqa: E402

GiB, MiB = 1 << 30, 1 << 20
VG, POOL = "fwbench", "pool0"
SUBNET = "10.77.0"
HOST, GUEST = f"{SUBNET}.50", f"{SUBNET}.61"
PREFIX = "iqn.2025-01.bench.firstwrite"
GUEST_IQN = f"{PREFIX}:guest"
WRITE_MIB = 256
FILL_MIB = 512
IPXE_LKRN = Path("/usr/lib/ipxe/ipxe.lkrn")
MODULES = ("virtio_pci", "virtio_net", "crc32c_generic", "iscsi_tcp", "iscsi_ibft", "sd_mod")
BINARIES = ("/usr/sbin/iscsistart", "/bin/dd", "/bin/date")

GUEST_INIT = r"""#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev 2>/dev/null
$B mkdir -p /tmp /run /var/lock /etc/iscsi
echo "FWBENCH guest up, kernel $($B uname -r)"
for m in $($B cat /modules.order); do $B insmod "/lib/modules/$m" 2>/dev/null; done
. /bench.env
$B ip link set lo up
$B ip link set eth0 up
$B ip addr add "$ADDR" dev eth0
if [ -r /sys/firmware/ibft/target0/target-name ]; then
  echo "FWBENCH ibft target $($B cat /sys/firmware/ibft/target0/target-name)"
fi
if /usr/sbin/iscsistart -b >/tmp/ibft.log 2>&1; then
  echo "FWBENCH boot-login ok (iscsistart -b, from iBFT)"
else
  echo "FWBENCH boot-login FAILED: $($B tail -n 3 /tmp/ibft.log | $B tr '\n' ' ')"
  if [ -n "$DEBUG" ]; then
    echo "FWBENCH debug modules: $($B cut -d' ' -f1 /proc/modules | $B tr '\n' ' ')"
    echo "FWBENCH debug transports: $($B ls /sys/class/iscsi_transport 2>&1)"
    echo "FWBENCH debug ip: $($B ip -o addr | $B tr '\n' ' ')"
    /usr/sbin/iscsistart -d 8 -b 2>&1 | $B tail -n 60 | $B sed 's/^/FWBENCH debug /'
  fi
fi
dev_of() {
  for s in /sys/class/iscsi_session/session*; do
    [ "$($B cat "$s/targetname" 2>/dev/null)" = "$1" ] || continue
    for b in "$s"/device/target*/*/block/*; do
      [ -e "$b" ] && { $B basename "$b"; return 0; }
    done
  done
  return 1
}
while read -r kind run target user secret; do
  i=0
  until /usr/sbin/iscsistart -i "$IQN" -t "$target" -g 1 -a "$PORTAL" -p 3260 \
      -u "$user" -w "$secret" >/tmp/login.log 2>&1; do
    i=$((i + 1))
    if [ $i -ge 5 ]; then
      echo "FWBENCH login FAILED $kind $run: $($B tail -n 2 /tmp/login.log | $B tr '\n' ' ')"
      break
    fi
    $B sleep 2
  done
  d=""; i=0
  while [ -z "$d" ] && [ $i -lt 60 ]; do
    d=$(dev_of "$target") || { $B sleep 1; i=$((i + 1)); }
  done
  if [ -z "$d" ] || [ ! -b "/dev/$d" ]; then echo "FWBENCH no disk for $kind $run"; continue; fi
  a=$(/bin/date +%s.%N)
  /bin/dd if=/dev/zero of="/dev/$d" bs=1M count="$MIB" oflag=direct 2>/tmp/dd.log
  rc=$?
  b=$(/bin/date +%s.%N)
  echo "FWBENCH result kind=$kind run=$run dev=$d rc=$rc start=$a end=$b"
  echo "FWBENCH dd $kind $run: $($B tail -n 1 /tmp/dd.log)"
done </plan
echo "FWBENCH done"
while :; do $B sleep 3600; done
"""


def guest_initramfs(out: Path, kernel: Path, steps: list[tuple[firstwrite.Step, ExportSpec]],
                    portal: str) -> Path:  # fmt: skip
    """The guest's gzip'd newc cpio: busybox, iscsistart + dd + date with their libraries,
    the modules for the NIC and iSCSI, /init (GUEST_INIT), /bench.env and /plan."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("bin", "sbin", "dev", "proc", "sys", "lib/modules"):
            (root / d).mkdir(parents=True)
        shutil.copy("/bin/busybox", root / "bin" / "busybox")
        for binary in BINARIES:
            dest = root / binary.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(binary, dest)
            ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True)
            for lib in firstwrite.ldd_paths(ldd.stdout):
                target = root / lib.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(lib, target)  # follows the symlink: the real file, under its name
        kos = kernel_modules(kernel, MODULES)
        for ko in kos:
            shutil.copy(ko, root / "lib" / "modules" / ko.name)
        (root / "modules.order").write_text("".join(f"{ko.name}\n" for ko in kos))
        (root / "bench.env").write_text(
            f"ADDR={GUEST}/24\nPORTAL={portal}\nIQN={GUEST_IQN}\nMIB={WRITE_MIB}\n"
            + ("DEBUG=1\n" if os.environ.get("FWBENCH_DEBUG") else "")
        )
        (root / "plan").write_text("".join(
            f"{st.kind} {st.run} {sp.target_iqn} {sp.chap_user} {sp.chap_secret}\n"
            for st, sp in steps))  # fmt: skip
        (root / "init").write_text(GUEST_INIT)
        (root / "init").chmod(0o755)
        os.mknod(root / "dev" / "console", 0o600 | 0o020000, os.makedev(5, 1))
        listing = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True)
        archive = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root,
                                 input=listing.stdout, capture_output=True, check=True)  # fmt: skip
        out.write_bytes(gzip.compress(archive.stdout, compresslevel=6))
    return out


def boot_disk(work: Path, kernel: Path, initrd: Path) -> Path:
    """tests/testbed/diskimage's bootable disk with its initramfs replaced by ``initrd``."""
    disk = build_boot_disk(work / "guest.raw", kernel, "FWBENCH", "guest", size_mib=64)
    size = disk.stat().st_size
    offset = PART_START * 512
    loop = subprocess.run(["losetup", "--find", "--show", "--offset", str(offset),
                           "--sizelimit", str(size - offset), str(disk)],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    try:
        subprocess.run(["mount", loop, str(mnt)], check=True, capture_output=True)
        try:
            shutil.copy(initrd, mnt / "boot" / "initrd.img")
        finally:
            subprocess.run(["umount", str(mnt)], check=True, capture_output=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True, capture_output=True)
    return disk


def ipxe_script(s: ExportSpec) -> str:
    return (
        "#!ipxe\n"
        f"set net0/ip {GUEST}\nset net0/netmask 255.255.255.0\nifopen net0\n"
        f"set initiator-iqn {s.initiator_iqn}\nset username {s.chap_user}\n"
        f"set password {s.chap_secret}\n"
        f"echo SAN boot of {s.target_iqn}\n"
        f"sanboot iscsi:{HOST}::3260:0:{s.target_iqn}\n"
    )


def export_spec(volume: str) -> ExportSpec:
    return ExportSpec(f"{PREFIX}:{volume}", f"/dev/{VG}/{volume}", GUEST_IQN, volume,
                      secrets.token_hex(8))  # fmt: skip


def prepare_volumes(ssh: SshRunner, runs: int, say=print):
    """VG, masters, one fresh volume per plan step, all exported; returns (lio, boot, steps)."""
    classic = LvmBackend(VG, runner=ssh)
    thin = LvmBackend(VG, thin_pool=POOL, runner=ssh)
    thin.ensure_vg(("/dev/vdb",), 8 * GiB)
    classic.create("mc", GiB)
    thin.create("mt", GiB)
    say(f"filling the masters' first {FILL_MIB} MiB with random data")
    ssh.run(["dd", "if=/dev/urandom", f"of=/dev/{VG}/mc", "bs=4M", f"count={FILL_MIB // 4}",
             "oflag=direct", "status=none"], timeout=900)  # fmt: skip
    ssh.run(["dd", f"if=/dev/{VG}/mc", f"of=/dev/{VG}/mt", "bs=4M", f"count={FILL_MIB // 4}",
             "oflag=direct", "status=none"], timeout=900)  # fmt: skip
    lio = RemoteLioExporter(ssh, HOST, host="storage VM")
    lio.check()
    steps = []
    for st in firstwrite.plan(runs):
        if st.kind == "classic":
            classic.clone("mc", st.volume)
        elif st.kind == "thin":
            thin.clone("mt", st.volume)
        else:
            classic.create(st.volume, GiB)
        spec = export_spec(st.volume)
        lio.export(spec)
        steps.append((st, spec))
        say(f"exported {st.kind} volume {st.volume} (run {st.run + 1})")
    return classic, lio, steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    missing = [p for p in (IPXE_LKRN, *map(Path, BINARIES)) if not p.exists()]
    if missing:
        print(f"missing {', '.join(map(str, missing))}: make apt (ipxe, open-iscsi)")
        return 2
    kernel = sorted(Path("/boot").glob("vmlinuz-*"))[-1]
    rootfs.build("debian-12-storage")
    files = storagevm.prepare(rootfs.archive_path("debian-12-storage"))
    with tempfile.TemporaryDirectory(prefix="bench-firstwrite-") as tmp:
        work = Path(tmp)
        for k in ("hostkey", "client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / k)],
                           check=True)  # fmt: skip
        with Testbed(work / "tb", ns_name="benchfw", subnet=SUBNET) as tb:
            t0 = time.monotonic()
            vm = storagevm.boot(tb, files, "storage", "52:54:00:77:00:50", f"{HOST}/24",
                                work / "hostkey", work / "client.pub",
                                data_disks=("200G",))  # fmt: skip
            m = vm.wait_for(storagevm.READY, timeout=300)
            if m.group(1) != "ready":
                print(vm.tail())
                return 1
            print(f"storage VM up in {time.monotonic() - t0:.0f} s", flush=True)
            key = (work / "hostkey.pub").read_text().strip()
            ssh = SshRunner(SshTarget(HOST, work / "client", host_key=key),
                            connect=storagevm.ns_connect(tb.ns))  # fmt: skip
            try:
                return run(tb, ssh, work, kernel, args.runs)
            finally:
                ssh.close()


def run(tb: Testbed, ssh: SshRunner, work: Path, kernel: Path, runs: int) -> int:
    classic, lio, steps = prepare_volumes(ssh, runs,
                                          say=lambda s: print(s, flush=True))  # fmt: skip
    initrd = guest_initramfs(work / "guest-initrd.img", kernel, steps, HOST)
    disk = boot_disk(work, kernel, initrd)
    got = import_image(classic, "fwboot", str(disk))
    boot = export_spec("fwboot")
    lio.export(boot)
    print(f"boot disk imported ({got.volume.size >> 20} MiB) and exported", flush=True)
    script = tb.workdir / "guest.ipxe"
    script.write_text(ipxe_script(boot))
    t0 = time.monotonic()
    guest = tb.boot_vm("fwguest", "52:54:00:77:00:61", kernel=str(IPXE_LKRN),
                       initrd=str(script), append="")  # fmt: skip
    guest.wait_for(r"FWBENCH guest up", 300)
    print(f"guest SAN-booted in {time.monotonic() - t0:.0f} s", flush=True)
    m = guest.wait_for(r"FWBENCH boot-login (ok|FAILED)[^\n]*", 120)
    print(m.group(0).strip(), flush=True)
    seen = 0

    def progress() -> bool:
        nonlocal seen
        text = guest.console_text()
        for line in text.splitlines()[seen:]:
            if line.startswith("FWBENCH") and "boot-login" not in line:
                print(" ", line.strip(), flush=True)
        seen = len(text.splitlines())
        return "FWBENCH done" in text

    wait_until(progress, 120 + 240 * len(steps), interval=2)
    results = firstwrite.parse_results(guest.console_text())
    sessions = {s.target_iqn: [x.initiator_iqn for x in lio.sessions(s.target_iqn)]
                for _, s in steps[:1]}  # fmt: skip
    print(f"\nLIO sessions of the first measured target: {sessions}")
    print(f"\n{WRITE_MIB} MiB sequential write (dd bs=1M oflag=direct), timed in the SAN-booted "
          f"guest, over its own iSCSI initiator to LIO on the storage VM:")  # fmt: skip
    for line in firstwrite.summary(results):
        print(line)
    return 0 if len(results) == len(steps) and all(r.rc == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
