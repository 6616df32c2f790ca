"""The inventory schema: what an agent may register, and the field named when it may not."""

from __future__ import annotations

import dataclasses

import pytest

from provisiond.errors import Invalid
from provisiond.hardware import DiskView, InventoryView, default_disk, parse_inventory

BAD = [
    ("x", "inventory"),
    ({"memory_bytes": "<string>"}, "inventory.memory_bytes"),
    ({"memory_bytes": -1}, "inventory.memory_bytes"),
    ({"cpu": {"count": "many"}}, "inventory.cpu.count"),
    ({"cpu": "QEMU"}, "inventory.cpu"),
    ({"disks": [{"name": f"d{i}"} for i in range(257)]}, "inventory.disks"),
    ({"disks": [{"size_bytes": 1}]}, "inventory.disks[0]"),
    ({"nics": [{"mac": 7}]}, "inventory.nics[0].mac"),
    ({"dmi": {"vendor": "x" * 257}}, "inventory.dmi.vendor"),
    ({"firmware": "coreboot"}, "inventory.firmware"),
]


@pytest.mark.parametrize(("raw", "field"), BAD, ids=[b[1] for b in BAD])
def test_bad_inventory_names_the_field(raw, field):
    with pytest.raises(Invalid) as err:
        parse_inventory(raw)
    assert err.value.field == field
    assert field in str(err.value)


def test_agent_inventory_round_trips_and_unknown_keys_are_dropped():
    raw = {"cpu": {"model": "QEMU", "count": 2}, "memory_bytes": 512 << 20,
           "disks": [{"name": "vda", "size_bytes": 1 << 30, "model": "", "serial": "",
                      "rotational": True}],
           "nics": [{"name": "eth0", "mac": "52:54:00:12:34:56", "driver": "virtio_net",
                     "link": True, "speed_mbps": None}],
           "dmi": {"vendor": "QEMU", "product": "Standard PC", "serial": "", "uuid": ""},
           "firmware": "bios", "kernel": "6.1.0", "from_a_newer_agent": [1, 2]}  # fmt: skip
    out = parse_inventory(raw)
    assert out == {k: v for k, v in raw.items() if k != "from_a_newer_agent"}
    assert parse_inventory({})["cpu"] == {"model": "", "count": 0}


# (stored inventory, disk paths, size of /dev/sdb, default disk)
VIEWS = [
    (None, [], None, "/dev/sda"),
    ({}, [], None, "/dev/sda"),
    ({"disks": None}, [], None, "/dev/sda"),
    ({"disks": [{"name": "nvme0n1", "size_bytes": 512}]}, ["/dev/nvme0n1"], None, "/dev/nvme0n1"),
    ({"disks": [{"name": ""}, {"size_bytes": 9}, "junk", {"name": "sdb", "size_bytes": 4096}]},
     ["/dev/sdb"], 4096, "/dev/sdb"),
    ({"disks": [{"name": "vda"}, {"name": "sdb", "size_bytes": 0}]},
     ["/dev/vda", "/dev/sdb"], None, "/dev/vda"),  # 0: the agent could not read it
]  # fmt: skip


@pytest.mark.parametrize(("inventory", "paths", "sdb", "default"), VIEWS)
def test_inventory_view_reads_the_disks(inventory, paths, sdb, default):
    view = InventoryView.of(inventory)
    assert view.disk_paths == paths
    for ref in ("/dev/sdb", "sdb"):
        found = view.disk(ref)
        assert (found.size_bytes if found else None) == sdb
    assert default_disk(inventory) == default


def test_a_registered_inventory_reads_back_the_same_disks():
    raw = {"disks": [{"name": "sda", "size_bytes": 10**12, "rotational": True}, {"name": "sr0"}]}
    view = InventoryView.of(parse_inventory(raw))
    assert view.disks == (DiskView("sda", 10**12), DiskView("sr0", None))
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.disks[0].name = "sdb"
