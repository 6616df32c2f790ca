"""Bootable test disks: MBR + ext2 + extlinux + kernel + an initramfs that prints a marker.

Owns building small BIOS-bootable raw images for SAN-boot and local-disk
tests (root: loop devices and a mount). The initramfs is busybox with an
``/init`` that prints ``<marker> <label>`` on the serial console, the disk's
first data file ``/marker.txt`` is the same text, and then it waits.

``report_in=True`` makes an image *built for provisiond* (issue 17): the disk
reserves the report-in slot (:mod:`provisiond.reportslot`, in the gap before
the partition) and the initramfs carries the kernel's virtio modules and a
report-in step: it reads the slot from ``/dev/vda``, writes the placeholder
back, gets an address with busybox udhcpc and posts the record's token to
the record's URL with busybox wget, printing ``REPORTED-IN <label>`` (or
``REPORT-IN FAILED ...``) on the console.

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
MBR_BIN = Path("/usr/lib/syslinux/mbr/mbr.bin")

INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
for w in $(/bin/busybox cat /proc/cmdline); do
  case "$w" in marker=*) M=${w#marker=} ;; label=*) L=${w#label=} ;; esac
done
/bin/busybox echo "$M $L"
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


def marker_initramfs(out: Path, modules: list[Path] | None = None, silent: bool = False) -> Path:
    """A gzip'd newc cpio: /bin/busybox, /init, /dev/console, /proc.

    ``modules`` (a list, even empty): the report-in variant (module doc);
    ``silent``: it gets its address but never reports in (a fault case).
    """
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("bin", "dev", "proc", "sys", "lib/modules"):
            (root / d).mkdir(parents=True)
        shutil.copy("/bin/busybox", root / "bin" / "busybox")
        init = INIT
        if modules is not None:
            for ko in modules:
                shutil.copy(ko, root / "lib" / "modules" / ko.name)
            (root / "modules.order").write_text("".join(f"{ko.name}\n" for ko in modules))
            (root / "udhcpc.sh").write_text(UDHCPC)
            (root / "udhcpc.sh").chmod(0o755)
            step = ("SILENT=1\n" if silent else "") + REPORT_IN
            init = INIT.replace('/bin/busybox echo "$M $L"\n',
                                '/bin/busybox echo "$M $L"\n' + step)  # fmt: skip
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
    report_in: bool = False,
    silent: bool = False,
) -> Path:
    """Write a bootable raw disk to ``out``; it prints ``marker label`` when booted.

    ``fill_mib``: that much random data in ``/filler.bin`` (a file system in use).
    ``report_in``: built for provisiond (report-in slot + report-in step, module doc);
    with ``silent`` its OS gets an address but never reports in.
    """
    work = out.parent / f".{out.name}.build"
    work.mkdir(parents=True, exist_ok=True)
    modules = kernel_modules(kernel) if report_in else None
    initrd = marker_initramfs(work / "initrd.img", modules, silent)
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
                f"  APPEND console=ttyS0,115200 quiet loglevel=3 marker={marker} label={label}\n"
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
