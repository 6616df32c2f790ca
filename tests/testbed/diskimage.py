"""Bootable test disks: MBR + ext2 + extlinux + kernel + an initramfs that prints a marker.

Owns building small BIOS-bootable raw images for SAN-boot and local-disk
tests (root: loop devices and a mount). The initramfs is busybox with an
``/init`` that prints ``<marker> <label>`` on the serial console, the disk's
first data file ``/marker.txt`` is the same text, and then it waits.

``probe=True``: the initramfs also holds the virtio modules, and its init
waits for a virtio disk (``/dev/vda``, e.g. hot-plugged later), writes
``GUEST-WROTE <random uuid>`` at byte :data:`PROBE_OFFSET` of it, syncs, and
prints the same line: a write the booted guest itself made, which the test
finds (or not) on each volume.

``report_in=True`` makes an image *built for provisiond* (issue 17): the disk
reserves the report-in slot (:mod:`provisiond.reportslot`, in the gap before
the partition) and the initramfs carries the kernel's virtio modules and a
report-in step: it reads the slot from ``/dev/vda``, writes the placeholder
back, gets an address with busybox udhcpc and posts the record's token to
the record's URL with busybox wget, printing ``REPORTED-IN <label>`` (or
``REPORT-IN FAILED ...``) on the console. ``silent=True``: it gets its
address but never reports in (``REPORT-IN SKIPPED``; a fault case).

This host's kernel lacks MBR partition scanning on loop devices, so the
partition is mapped with ``losetup --offset`` and the VBR's "hidden
sectors" field is patched to the partition start afterwards (extlinux cannot
learn it from a loop device).
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from provisiond import reportslot

PART_START = 2048  # sectors
PROBE_OFFSET = 22 << 20  # where a probe guest writes its token (inside the ext2, unused)
VIRTIO = ("virtio/virtio_ring", "virtio/virtio", "virtio/virtio_pci_legacy_dev",
          "virtio/virtio_pci_modern_dev", "virtio/virtio_pci", "block/virtio_blk")  # fmt: skip
MBR_BIN = Path("/usr/lib/syslinux/mbr/mbr.bin")

INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
for w in $(/bin/busybox cat /proc/cmdline); do
  case "$w" in marker=*) M=${w#marker=} ;; label=*) L=${w#label=} ;; probe=*) P=${w#probe=} ;; esac
done
/bin/busybox echo "$M $L"
if [ -n "$P" ]; then
  for m in $(/bin/busybox cat /lib/modules/order); do /bin/busybox insmod /lib/modules/$m.ko; done
  while [ ! -b /dev/vda ]; do /bin/busybox sleep 1; done
  T="GUEST-WROTE $(/bin/busybox cat /proc/sys/kernel/random/uuid)"
  /bin/busybox echo "$T" | /bin/busybox dd of=/dev/vda bs=1 seek=$P conv=notrunc,fsync 2>/dev/null
  /bin/busybox sync
  /bin/busybox echo "$T"
fi
while :; do /bin/busybox sleep 3600; done
"""


REPORT_IN = """
B=/bin/busybox
$B mount -t sysfs sysfs /sys
for m in $($B cat /modules.order); do $B insmod "/lib/modules/$m" 2>/dev/null; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 30 ]; do $B sleep 1; i=$((i + 1)); done
$B dd if=/dev/vda of=/slot bs=4096 skip=255 count=1 2>/dev/null
$B tr -d '\\000' </slot >/slot.txt
URL=$($B sed -n 's/^url=//p' /slot.txt)
TOK=$($B sed -n 's/^token=//p' /slot.txt)
if [ "$($B head -n 1 /slot.txt)" != "PROVISIOND-REPORT-IN v1" ] || [ -z "$TOK" ]; then
  $B echo "REPORT-IN FAILED: no report-in record in the slot"
else
  { $B printf 'PROVISIOND-REPORT-IN-SLOT v1\\n'; $B head -c 4067 /dev/zero; } >/ph
  $B dd if=/ph of=/dev/vda bs=4096 seek=255 count=1 conv=notrunc,fsync 2>/dev/null
  $B ip link set eth0 up
  $B udhcpc -i eth0 -n -q -t 10 -T 2 -s /udhcpc.sh >/dev/null 2>&1
  if [ -n "$SILENT" ]; then
    $B echo "REPORT-IN SKIPPED: this image never reports in"
  elif $B wget -q -O /dev/null --header "Authorization: Bearer $TOK" \\
      --post-data "hostname=$L" "$URL"; then
    $B echo "REPORTED-IN $L"
  else
    $B echo "REPORT-IN FAILED: POST $URL refused or unreachable"
  fi
fi
"""
UDHCPC = """#!/bin/busybox sh
case "$1" in bound|renew) /bin/busybox ifconfig "$interface" "$ip" netmask "$subnet" up ;; esac
"""
NET_MODULES = ("virtio_pci", "virtio_blk", "virtio_net")


def kernel_version(kernel: Path) -> str:
    """The release of a bzImage (setup header field ``kernel_version``, boot protocol 2.00)."""
    head = kernel.read_bytes()[:0x10000]
    off = int.from_bytes(head[0x20E:0x210], "little") + 0x200
    return head[off : off + 64].split(b" ", 1)[0].decode()


def kernel_modules(kernel: Path, names=NET_MODULES) -> list[Path]:
    """``names`` and their dependencies, in load order, for the kernel's release."""
    release, out = kernel_version(kernel), []
    for name in names:
        deps = subprocess.run(["modprobe", "-S", release, "--show-depends", name],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
        for line in deps.splitlines():
            if line.startswith("insmod ") and Path(line.split()[1]) not in out:
                out.append(Path(line.split()[1]))
    return out


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def marker_initramfs(
    out: Path, modules: Path | None = None, report: list[Path] | None = None, silent: bool = False
) -> Path:
    """A gzip'd newc cpio: /bin/busybox, /init, /dev/console, /proc (+ virtio modules).

    ``report`` (module files in load order): the report-in variant (module doc).
    """
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("bin", "dev", "proc", "sys", "lib/modules"):
            (root / d).mkdir(parents=True)
        if modules is not None:
            for m in VIRTIO:
                shutil.copy(modules / "kernel" / "drivers" / f"{m}.ko", root / "lib" / "modules")
            (root / "lib" / "modules" / "order").write_text(
                " ".join(m.split("/")[1] for m in VIRTIO) + "\n"
            )
        shutil.copy("/bin/busybox", root / "bin" / "busybox")
        init = INIT
        if report is not None:
            for ko in report:
                shutil.copy(ko, root / "lib" / "modules" / ko.name)
            (root / "modules.order").write_text("".join(f"{ko.name}\n" for ko in report))
            (root / "udhcpc.sh").write_text(UDHCPC)
            (root / "udhcpc.sh").chmod(0o755)
            step = ("SILENT=1\n" if silent else "") + REPORT_IN
            init = INIT.replace('/bin/busybox echo "$M $L"\n',
                                '/bin/busybox echo "$M $L"\n' + step, 1)  # fmt: skip
        (root / "init").write_text(init)
        (root / "init").chmod(0o755)
        os.mknod(root / "dev" / "console", 0o600 | 0o020000, os.makedev(5, 1))
        listing = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True)
        archive = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root,
                                 input=listing.stdout, capture_output=True, check=True)  # fmt: skip
        out.write_bytes(gzip.compress(archive.stdout, compresslevel=1))
    return out


def build_boot_disk(
    out: Path,
    kernel: Path,
    marker: str,
    label: str,
    size_mib: int = 64,
    fill_mib: int = 0,
    probe: bool = False,
    report_in: bool = False,
    silent: bool = False,
) -> Path:
    """Write a bootable raw disk to ``out``; it prints ``marker label`` when booted.

    ``fill_mib``: that much random data in ``/filler.bin`` (a file system in use).
    ``probe``: the guest writes a token into /dev/vda (see the module doc).
    ``report_in``: built for provisiond (report-in slot + report-in step, module doc);
    with ``silent`` its OS gets an address but never reports in.
    """
    work = out.parent / f".{out.name}.build"
    work.mkdir(parents=True, exist_ok=True)
    modules = Path("/lib/modules") / kernel.name.removeprefix("vmlinuz-") if probe else None
    report = kernel_modules(kernel) if report_in else None
    initrd = marker_initramfs(work / "initrd.img", modules, report, silent)
    probe_arg = f" probe={PROBE_OFFSET}" if probe else ""
    with open(out, "wb") as fh:
        fh.truncate(size_mib * 2**20)
    subprocess.run(["sfdisk", "-q", str(out)], input=f"start={PART_START}, type=83, bootable\n",
                   text=True, check=True, capture_output=True)  # fmt: skip
    offset = PART_START * 512
    loop = _run("losetup", "--find", "--show", "--offset", str(offset), "--sizelimit",
                str(size_mib * 2**20 - offset), str(out)).strip()  # fmt: skip
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    try:
        _run("mkfs.ext2", "-q", "-L", label[:16], loop)
        _run("mount", loop, str(mnt))
        try:
            boot = mnt / "boot"
            (boot / "extlinux").mkdir(parents=True)
            shutil.copy(kernel, boot / "vmlinuz")
            shutil.copy(initrd, boot / "initrd.img")
            (mnt / "marker.txt").write_text(f"{marker} {label}\n")
            if fill_mib:
                (mnt / "filler.bin").write_bytes(os.urandom(fill_mib * 2**20))
            (boot / "extlinux" / "extlinux.conf").write_text(
                "SERIAL 0 115200\nDEFAULT disk\nPROMPT 0\nTIMEOUT 0\nLABEL disk\n"
                "  KERNEL /boot/vmlinuz\n  INITRD /boot/initrd.img\n"
                f"  APPEND console=ttyS0,115200 quiet loglevel=3 marker={marker} label={label}"
                f"{probe_arg}\n"
            )
            _run("extlinux", "--install", str(boot / "extlinux"))
        finally:
            _run("umount", str(mnt))
    finally:
        _run("losetup", "-d", loop)
    with open(out, "r+b") as fh:
        fh.seek(offset + 0x1C)  # VBR "hidden sectors" (LE32) = partition start
        fh.write(PART_START.to_bytes(4, "little"))
        fh.seek(0)
        fh.write(MBR_BIN.read_bytes()[:440])
        if report_in:
            assert reportslot.OFFSET + reportslot.SIZE <= PART_START * 512
            fh.seek(reportslot.OFFSET)
            fh.write(reportslot.placeholder())
    shutil.rmtree(work, ignore_errors=True)
    return out
