"""initrd/build.sh: reproducible output and the archive's contents.

Owns: building the initrd twice from the same inputs and comparing bytes,
and reading the archive back (a small newc reader, kernel buffer format) to
check what a boot needs is in it. build.sh needs no root (owners are forced
to 0:0, /dev/console is written as an archive entry), so nothing skips for
want of root; it skips only when the Debian inputs are missing.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.initrdlab import BUILD_SH, NO_KERNEL, REPO, _version_key, newest_kernel  # noqa: F401

pytestmark = [pytest.mark.interop, pytest.mark.timeout(180)]


def require_inputs() -> str:
    kver = newest_kernel()
    if kver is None:
        pytest.skip(reason=NO_KERNEL)
    for tool in ("cpio", "depmod", "modprobe", "dropbear", "dropbearkey", "zstd"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.skip(reason=f"{tool} missing (apt-get install cpio kmod dropbear-bin zstd)")
    if not Path("/bin/busybox").exists():
        pytest.skip(reason="/bin/busybox missing (apt-get install busybox-static)")
    return kver


def build(out: Path, kver: str, epoch: str = "0") -> Path:
    env = dict(os.environ, SOURCE_DATE_EPOCH=epoch)
    res = subprocess.run(
        [str(BUILD_SH), "--kernel", kver, "--out", str(out)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "initrd: wrote" in res.stdout
    return out / "initrd.img"


def newc_entries(data: bytes) -> dict[str, tuple[int, int, int, int, bytes]]:
    """name -> (mode, uid, mtime, rdev major<<8|minor, data) for every archive
    member (all concatenated archives; zero padding between them is skipped)."""
    out, pos = {}, 0
    while pos < len(data):
        if data[pos] == 0:
            pos += 1
            continue
        assert data[pos : pos + 6] == b"070701", f"bad magic at {pos}"
        f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        _, mode, uid, _, _, mtime, size, _, _, rmaj, rmin, namesize, _ = f
        name = data[pos + 110 : pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        body = data[pos : pos + size]
        pos = (pos + size + 3) & ~3
        if name != "TRAILER!!!":
            out[name] = (mode, uid, mtime, rmaj << 8 | rmin, body)
    return out


@pytest.fixture(scope="module")
def kver() -> str:
    return require_inputs()


def test_two_builds_are_byte_identical(kver, tmp_path):
    a = build(tmp_path / "a", kver)
    b = build(tmp_path / "b", kver)
    assert hashlib.sha256(a.read_bytes()).hexdigest() == hashlib.sha256(b.read_bytes()).hexdigest()
    assert (tmp_path / "a" / "vmlinuz").read_bytes() == Path(f"/boot/vmlinuz-{kver}").read_bytes()


def test_source_date_epoch_sets_every_mtime(kver, tmp_path):
    img = build(tmp_path, kver, epoch="1700000000")
    entries = newc_entries(gzip.decompress(img.read_bytes()))
    assert {e[2] for e in entries.values()} == {1700000000}
    assert {e[1] for e in entries.values()} == {0}


EXPECTED = [
    # (member, mode, rdev)
    ("dev/console", 0o020600, 5 << 8 | 1),
    ("init", 0o100755, 0),
    ("bin/busybox", 0o100755, 0),
    ("usr/lib/provisiond/agent", 0o100755, 0),
    ("usr/share/udhcpc/default.script", 0o100755, 0),
    ("usr/lib/provisiond/lib/inventory.sh", 0o100644, 0),
    ("usr/sbin/dropbear", 0o100755, 0),
    ("usr/bin/zstd", 0o100755, 0),
    ("lib64/ld-linux-x86-64.so.2", 0o100755, 0),
    ("root", 0o040700, 0),
    ("tmp", 0o041777, 0),
]


def test_archive_holds_what_a_boot_needs(kver, tmp_path):
    entries = newc_entries(gzip.decompress(build(tmp_path, kver).read_bytes()))
    for name, mode, rdev in EXPECTED:
        assert name in entries, name
        assert (entries[name][0], entries[name][3]) == (mode, rdev), name
    assert entries["bin/sh"][0] & 0o170000 == 0o120000  # applet symlink
    assert "bin/busybox" in entries and not any(n.endswith("/.keep") for n in entries)
    moddir = f"lib/modules/{kver}"
    assert f"{moddir}/kernel/drivers/net/virtio_net.ko" in entries
    assert f"{moddir}/modules.dep" in entries
    load = entries["etc/provisiond/modules.load"][4].decode().split()
    assert "kernel/drivers/virtio/virtio_pci.ko" in load
    assert len(load) == len(set(load)) and all(f"{moddir}/{m}" in entries for m in load)
    assert load.index("kernel/drivers/virtio/virtio_ring.ko") < load.index(
        "kernel/drivers/net/virtio_net.ko"
    )  # dependencies first
    assert not any("dropbear_" in n and "host_key" in n for n in entries)  # no baked key


def test_missing_kernel_fails_clearly(tmp_path):
    res = subprocess.run(
        [str(BUILD_SH), "--kernel", "0.0-nonexistent", "--out", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode != 0
    assert "no modules for kernel 0.0-nonexistent" in res.stderr
