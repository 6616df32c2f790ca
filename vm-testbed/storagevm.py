"""The storage host VM: Debian 12 with LVM, LIO and tgt, booted by its own init in QEMU.

Owns turning the ``debian-12-storage`` root file system archive (built and
cached by ``provisiond rootfs build debian-12-storage``, see
provisiond/rootfs.py) into bootable files — ``vmlinuz``, ``initrd.img`` and
an ext4 ``root.ext4`` — cached beside the archive (same inputs, same files;
a lock file makes concurrent test runs build them once), and booting one
machine from them: the root disk is opened ``snapshot=on`` (the cached image
never changes), plus blank data disks for volume groups. Its init
(``/usr/local/sbin/provisiond-storage-init``) takes the address from the
kernel command line and the SSH host key and authorized key from QEMU
fw_cfg, and prints ``provisiond-storage: ready`` when sshd runs.

Stdlib only; import with ``vm-testbed/`` on ``sys.path``.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bootfiles import BootFiles

READY = r"provisiond-storage: (ready|FAILED)"
ROOT_SIZE = "1400M"


@dataclass(frozen=True)
class StorageVmFiles(BootFiles):
    @property
    def root(self) -> Path:
        return self.dir / "root.ext4"


def prepare(archive: Path, say=print) -> StorageVmFiles:
    """Kernel, initrd and root.ext4 from ``archive`` (rootfs.tar.zst), cached beside it."""
    out = StorageVmFiles(archive.parent / "storagevm")
    with open(archive.parent / ".storagevm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.root.is_file() and out.kernel.is_file() and out.initrd.is_file():
            return out
        say(f"storage VM: unpacking {archive} into an ext4 root (once per archive)")
        tmp = Path(tempfile.mkdtemp(prefix=".storagevm-", dir=archive.parent))
        try:
            root = tmp / "root"
            root.mkdir()
            subprocess.run(["tar", "--zstd", "-xpf", str(archive), "-C", str(root),
                            "--numeric-owner", "--xattrs", "--xattrs-include=*"],
                           check=True, capture_output=True, timeout=600)  # fmt: skip
            files = tmp / "storagevm"
            files.mkdir()
            kernel = sorted((root / "boot").glob("vmlinuz-*"))[-1]
            initrd = sorted((root / "boot").glob("initrd.img-*"))[-1]
            shutil.copy(kernel, files / "vmlinuz")
            shutil.copy(initrd, files / "initrd.img")
            subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "storage", "-d", str(root),
                            str(files / "root.ext4"), ROOT_SIZE],
                           check=True, capture_output=True, timeout=600)  # fmt: skip
            shutil.rmtree(out.dir, ignore_errors=True)
            files.rename(out.dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def ns_connect(ns: str):
    """A ``storage.ssh.Connect`` that opens its TCP connection inside namespace ``ns``."""
    import socket

    from tests.testbed.netns_thread import in_netns

    def connect(address: tuple[str, int], timeout: float) -> socket.socket:
        with in_netns(ns):
            return socket.create_connection(address, timeout=timeout)

    return connect


def boot(tb, files: StorageVmFiles, name: str, mac: str, address: str, hostkey: Path,
         authkey: Path, data_disks: tuple[str, ...] = ("4G",), mem: int = 1024):  # fmt: skip
    """Boot the storage VM on the test bed ``tb`` at ``address`` (CIDR); returns the Vm.

    Data disks (sparse, blank) become /dev/vdb, /dev/vdc, … (the root is /dev/vda).
    """
    from vm import size_bytes

    vm_dir = tb.workdir / "vms"
    vm_dir.mkdir(parents=True, exist_ok=True)
    drives = ["-drive", f"file={files.root},format=raw,if=virtio,snapshot=on"]
    for i, size in enumerate(data_disks):
        disk = vm_dir / f"{name}-data{i}.raw"
        with open(disk, "wb") as fh:
            fh.truncate(size_bytes(size))
        drives += ["-drive", f"file={disk},format=raw,if=virtio,cache=unsafe"]
    append = (f"root=/dev/vda rw init=/usr/local/sbin/provisiond-storage-init console=ttyS0 "
              f"quiet loglevel=3 pv.addr={address}")  # fmt: skip
    return tb.boot_vm(
        name, mac, mem=mem, kernel=str(files.kernel), initrd=str(files.initrd), append=append,
        fw_cfg=(f"name=opt/provisiond/hostkey,file={hostkey}",
                f"name=opt/provisiond/authkey,file={authkey}"),
        extra=tuple(drives),
    )  # fmt: skip
