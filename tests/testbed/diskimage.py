"""Bootable test disks: MBR + ext2 + extlinux + kernel + an initramfs that prints a marker.

Owns building small BIOS-bootable raw images for SAN-boot and local-disk
tests (root: loop devices and a mount). The initramfs is busybox with an
``/init`` that prints ``<marker> <label>`` on the serial console, the disk's
first data file ``/marker.txt`` is the same text, and then it waits.

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


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def marker_initramfs(out: Path) -> Path:
    """A gzip'd newc cpio: /bin/busybox, /init, /dev/console, /proc."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("bin", "dev", "proc"):
            (root / d).mkdir()
        shutil.copy("/bin/busybox", root / "bin" / "busybox")
        (root / "init").write_text(INIT)
        (root / "init").chmod(0o755)
        os.mknod(root / "dev" / "console", 0o600 | 0o020000, os.makedev(5, 1))
        listing = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True)
        archive = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root,
                                 input=listing.stdout, capture_output=True, check=True)  # fmt: skip
        out.write_bytes(gzip.compress(archive.stdout, compresslevel=1))
    return out


def build_boot_disk(
    out: Path, kernel: Path, marker: str, label: str, size_mib: int = 64, fill_mib: int = 0
) -> Path:
    """Write a bootable raw disk to ``out``; it prints ``marker label`` when booted.

    ``fill_mib``: that much random data in ``/filler.bin`` (a file system in use).
    """
    work = out.parent / f".{out.name}.build"
    work.mkdir(parents=True, exist_ok=True)
    initrd = marker_initramfs(work / "initrd.img")
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
    shutil.rmtree(work, ignore_errors=True)
    return out
