"""Pure parts of the test-bed harness: QEMU command lines, console log parsing, waits.

No root, no QEMU: these run everywhere (the ROM lookup is faked by a temp dir).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "vm-testbed"))

import vm as vmmod
from testbed import wait_until


@pytest.fixture(autouse=True)
def fake_roms(tmp_path, monkeypatch):
    roms = tmp_path / "roms"
    roms.mkdir()
    for name in vmmod.NIC_ROMS.values():
        (roms / name).write_bytes(b"\x55\xaa")
    monkeypatch.setattr(vmmod, "ROM_DIRS", (roms,))


def argv_for(**kw) -> str:
    spec = vmmod.VmSpec(name="m1", mac="52:54:00:00:00:01", tap="tap3", **kw)
    return " ".join(vmmod.qemu_argv(spec, Path("/w")))


@pytest.mark.parametrize(
    ("kw", "present", "absent"),
    [
        ({}, ["-accel tcg -cpu max", "-boot n", "-nographic -no-reboot", "-pidfile /w/m1.pid",
              "ifname=tap3,script=no", "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01"],
         ["-kernel", "-drive"]),
        ({"nic": "e1000", "mem": 1024, "smp": 2}, ["e1000,netdev=n0", "-m 1024 -smp 2"], []),
        ({"disks": ("1G", "2G"), "disk_if": "ide"},
         ["file=/w/m1-disk0.raw,format=raw,if=ide", "file=/w/m1-disk1.raw"], []),
        ({"kernel": "/k", "initrd": "/i", "append": "a=1"},
         ["-kernel /k -append a=1 -initrd /i"], ["-boot"]),
    ],
)  # fmt: skip
def test_qemu_argv(kw, present, absent):
    line = argv_for(**kw)
    for part in present:
        assert part in line
    for part in absent:
        assert part not in line


def test_unknown_nic_and_missing_rom_fail_loudly(monkeypatch, tmp_path):
    with pytest.raises(vmmod.VmError, match="unsupported"):
        argv_for(nic="rtl8139")
    monkeypatch.setattr(vmmod, "ROM_DIRS", (tmp_path / "none",))
    with pytest.raises(vmmod.VmError, match="apt-get install ipxe-qemu"):
        argv_for()


@pytest.mark.parametrize(
    ("size", "expected"), [("1G", 1 << 30), ("64M", 64 << 20), ("512", 512), ("1.5K", 1536)]
)
def test_size_bytes(size, expected):
    assert vmmod.size_bytes(size) == expected


def test_console_log_is_parsed_and_matched(tmp_path):
    spec = vmmod.VmSpec(name="m1", mac="52:54:00:00:00:01", tap="tap0")
    m = vmmod.Vm(spec, tmp_path)
    m.log_path.write_text(
        "# t0=1.0 qemu ...\n[   0.100] SeaBIOS\n[  12.500] AGENT-UP ip=10.0.0.5\n"
    )
    assert m.console_lines() == [(0.1, "SeaBIOS"), (12.5, "AGENT-UP ip=10.0.0.5")]
    m.pidfile.write_text(f"{__import__('os').getpid()}\n")  # "alive": our own pid
    t, match = m.wait_for_timed(r"ip=(\S+)", timeout=1)
    assert (t, match.group(1)) == (12.5, "10.0.0.5")
    with pytest.raises(vmmod.VmError, match="no /NEVER/ within"):
        m.wait_for("NEVER", timeout=0.3)


def test_tslog_stamps_lines_and_strips_ansi(tmp_path):
    import os

    r, w = os.pipe()
    os.write(w, b"\x1b[2Jhello\r\nworld\rlast")
    os.close(w)
    log = tmp_path / "c.log"
    vmmod.tslog(str(log), t0=0.0, fd=r)
    os.close(r)
    texts = [line.split("] ", 1)[1] for line in log.read_text().splitlines()]
    assert texts == ["hello", "world", "last"]


def test_wait_until_returns_value_or_times_out():
    calls = iter([0, None, "ok"])
    assert wait_until(lambda: next(calls), timeout=5, interval=0.01) == "ok"
    with pytest.raises(TimeoutError):
        wait_until(lambda: False, timeout=0.05, interval=0.01)
