"""The initrd's shell helpers (common.sh, json.sh, inventory.sh) under busybox sh.

Owns: table tests of JSON encoding, MAC normalisation and command-line
parsing, and a golden test of the whole inventory against a fake /proc + /sys
tree (SYSROOT). The functions run in the host's busybox sh, the shell they run
in on the machine; outputs are checked with json.loads. No root, no sockets.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[2] / "initrd/rootfs/usr/lib/provisiond/lib"
BUSYBOX = shutil.which("busybox")

pytestmark = pytest.mark.skipif(
    BUSYBOX is None, reason="busybox not on PATH (apt-get install busybox-static)"
)


def sh(script: str, sysroot: Path | None = None, **env: bytes) -> subprocess.CompletedProcess:
    prelude = f". {LIB}/common.sh; . {LIB}/json.sh; . {LIB}/inventory.sh; "
    environ = {b"PATH": os.environb[b"PATH"], b"SYSROOT": str(sysroot or "/nonexistent").encode()}
    environ.update({k.encode(): v for k, v in env.items()})
    return subprocess.run(
        [BUSYBOX, "sh", "-c", prelude + script], env=environ, capture_output=True, timeout=30
    )


JSON_STR_CASES = [
    # (raw bytes, decoded JSON string)
    (b"plain", "plain"),
    (b'say "hi"', 'say "hi"'),
    (b"back\\slash", "back\\slash"),
    (b"  QEMU HARDDISK   ", "QEMU HARDDISK"),
    (b"tab\there", "tab here"),
    (b"ctl\x01\x1f\x7fend", "ctl???end"),
    (b"caf\xe9", "caf?"),  # Latin-1 from firmware: never invalid UTF-8
    (b"line\nbreak", "line?break"),
    (b"", ""),
    (b'\\"', '\\"'),
]


@pytest.mark.parametrize(("raw", "expected"), JSON_STR_CASES)
def test_json_str(raw, expected):
    res = sh('json_str "$V"', V=raw)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == expected


JSON_INT_CASES = [("0", 0), ("1000", 1000), ("007", 7), ("-1", None), ("", None), ("12a", None)]


@pytest.mark.parametrize(("raw", "expected"), JSON_INT_CASES)
def test_json_int(raw, expected):
    assert json.loads(sh('json_int "$V"', V=raw.encode()).stdout) == expected


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("0", False), ("", False)])
def test_json_bool(raw, expected):
    assert json.loads(sh('json_bool "$V"', V=raw.encode()).stdout) is expected


MAC_CASES = [
    ("01-52-54-00-12-34-56", "52:54:00:12:34:56"),  # pxelinux/iPXE BOOTIF
    ("01-52-54-00-AB-CD-EF", "52:54:00:ab:cd:ef"),
    ("52:54:00:12:34:56", "52:54:00:12:34:56"),
    ("52-54-00-12-34-56", "52:54:00:12:34:56"),
    ("01-52-54-00-12", None),
    ("zz:54:00:12:34:56", None),
    ("", None),
]


@pytest.mark.parametrize(("raw", "expected"), MAC_CASES)
def test_normalize_mac(raw, expected):
    res = sh('normalize_mac "$V"', V=raw.encode())
    assert (res.stdout.decode().strip() or None) == expected
    assert (res.returncode == 0) == (expected is not None)


CMDLINE = (
    "BOOT_IMAGE=vmlinuz console=ttyS0 provisiond.url=http://10.0.0.1:8080/ "
    "provisiond.urlx=nope provisiond.token=abc=def== BOOTIF=01-52-54-00-12-34-56 quiet "
    "provisiond.token=last"
)
CMDLINE_CASES = [
    ("provisiond.url", "http://10.0.0.1:8080/"),
    ("provisiond.token", "last"),  # the last one wins, as in the kernel
    ("BOOTIF", "01-52-54-00-12-34-56"),
    ("provisiond.interval", None),
    ("quiet", None),  # a flag without "=" is no key=value
]


@pytest.mark.parametrize(("key", "expected"), CMDLINE_CASES)
def test_cmdline_get(tmp_path, key, expected):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cmdline").write_text(CMDLINE + "\n")
    res = sh(f"cmdline_get {key}", tmp_path)
    assert (res.stdout.decode().strip() if res.returncode == 0 else None) == expected


def test_boot_mac_from_cmdline(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cmdline").write_text(CMDLINE + "\n")
    assert sh("boot_mac", tmp_path).stdout == b"52:54:00:12:34:56\n"


def write_tree(root: Path, files: dict[str, bytes | str], links: dict[str, str]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    for rel, target in links.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(target)


FAKE_FILES: dict[str, bytes | str] = {
    "proc/cpuinfo": 'processor\t: 0\nmodel name\t: Intel(R) Xeon(R) "Test" CPU\n\n'
    'processor\t: 1\nmodel name\t: Intel(R) Xeon(R) "Test" CPU\n\n'
    'processor\t: 2\nmodel name\t: Intel(R) Xeon(R) "Test" CPU\n',
    "proc/meminfo": "MemTotal:       16303976 kB\nMemFree:         1000 kB\n",
    "proc/sys/kernel/osrelease": "6.1.0-56-amd64\n",
    "sys/block/sda/size": "1953525168\n",
    "sys/block/sda/device/model": "ST1000DM003-1ER1\n",
    "sys/block/sda/device/serial": "Z4Y1ABCD\n",
    "sys/block/sda/queue/rotational": "1\n",
    "sys/block/nvme0n1/size": "1000215216\n",
    "sys/block/nvme0n1/device/model": "Samsung SSD 980 PRO 500GB               \n",
    "sys/block/nvme0n1/device/serial": "  S5GXNX0R123456  \n",
    "sys/block/nvme0n1/queue/rotational": "0\n",
    "sys/block/vda/size": "131072\n",
    "sys/block/vda/serial": "PVD-1\n",
    "sys/block/vda/queue/rotational": "1\n",
    "sys/block/loop0/size": "100\n",
    "sys/block/ram0/size": "100\n",
    "sys/block/sr0/size": "100\n",
    "sys/class/net/eth0/address": "52:54:00:12:34:56\n",
    "sys/class/net/eth0/carrier": "1\n",
    "sys/class/net/eth0/speed": "1000\n",
    "sys/class/net/eth1/address": "52:54:00:12:34:57\n",
    "sys/class/net/eth1/carrier": "0\n",
    "sys/class/net/eth1/speed": "-1\n",
    "sys/class/net/lo/address": "00:00:00:00:00:00\n",
    "sys/class/net/br0/address": "52:54:00:00:00:01\n",
    "sys/class/dmi/id/sys_vendor": "Dell Inc.\n",
    "sys/class/dmi/id/product_name": b"PowerEdge R640 \xa9\n",
    "sys/class/dmi/id/product_serial": "ABC1234\n",
    "sys/class/dmi/id/product_uuid": "4c4c4544-0042-3510-8052-b2c04f4d3132\n",
    "sys/firmware/efi/fw_platform_size": "64\n",
    "drivers/e1000e/.keep": "",
    "drivers/igb/.keep": "",
}
FAKE_LINKS = {
    "sys/class/net/eth0/device/driver": "../../../../drivers/e1000e",
    "sys/class/net/eth1/device/driver": "../../../../drivers/igb",
}

GOLDEN = {
    "cpu": {"model": 'Intel(R) Xeon(R) "Test" CPU', "count": 3},
    "memory_bytes": 16303976 * 1024,
    "disks": [
        {
            "name": "nvme0n1",
            "size_bytes": 1000215216 * 512,
            "model": "Samsung SSD 980 PRO 500GB",
            "serial": "S5GXNX0R123456",
            "rotational": False,
        },
        {
            "name": "sda",
            "size_bytes": 1953525168 * 512,
            "model": "ST1000DM003-1ER1",
            "serial": "Z4Y1ABCD",
            "rotational": True,
        },
        {
            "name": "vda",
            "size_bytes": 131072 * 512,
            "model": "",
            "serial": "PVD-1",
            "rotational": True,
        },
    ],
    "nics": [
        {
            "name": "eth0",
            "mac": "52:54:00:12:34:56",
            "driver": "e1000e",
            "link": True,
            "speed_mbps": 1000,
        },
        {
            "name": "eth1",
            "mac": "52:54:00:12:34:57",
            "driver": "igb",
            "link": False,
            "speed_mbps": None,
        },
    ],
    "dmi": {
        "vendor": "Dell Inc.",
        "product": "PowerEdge R640 ?",
        "serial": "ABC1234",
        "uuid": "4c4c4544-0042-3510-8052-b2c04f4d3132",
    },
    "firmware": "uefi",
    "kernel": "6.1.0-56-amd64",
}


def test_inventory_golden(tmp_path):
    write_tree(tmp_path, FAKE_FILES, FAKE_LINKS)
    res = sh("inventory_json", tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count(b"\n") == 1  # one line
    assert json.loads(res.stdout) == GOLDEN


def test_inventory_of_an_empty_machine(tmp_path):
    """Nothing readable: still valid JSON with the contract's keys and types."""
    res = sh("inventory_json", tmp_path)
    assert json.loads(res.stdout) == {
        "cpu": {"model": "", "count": 0},
        "memory_bytes": 0,
        "disks": [],
        "nics": [],
        "dmi": {"vendor": "", "product": "", "serial": "", "uuid": ""},
        "firmware": "bios",
        "kernel": os.uname().release,
    }
