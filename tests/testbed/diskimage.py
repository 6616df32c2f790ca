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


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def marker_initramfs(out: Path, modules: Path | None = None) -> Path:
    """A gzip'd newc cpio: /bin/busybox, /init, /dev/console, /proc (+ virtio modules)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("bin", "dev", "proc", "lib/modules"):
            (root / d).mkdir(parents=True)
        if modules is not None:
            for m in VIRTIO:
                shutil.copy(modules / "kernel" / "drivers" / f"{m}.ko", root / "lib" / "modules")
            (root / "lib" / "modules" / "order").write_text(
                " ".join(m.split("/")[1] for m in VIRTIO) + "\n"
            )
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
    out: Path,
    kernel: Path,
    marker: str,
    label: str,
    size_mib: int = 64,
    fill_mib: int = 0,
    probe: bool = False,
) -> Path:
    """Write a bootable raw disk to ``out``; it prints ``marker label`` when booted.

    ``fill_mib``: that much random data in ``/filler.bin`` (a file system in use).
    ``probe``: the guest writes a token into /dev/vda (see the module doc).
    """
    work = out.parent / f".{out.name}.build"
    work.mkdir(parents=True, exist_ok=True)
    modules = Path("/lib/modules") / kernel.name.removeprefix("vmlinuz-") if probe else None
    initrd = marker_initramfs(work / "initrd.img", modules)
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
    shutil.rmtree(work, ignore_errors=True)
    return out
