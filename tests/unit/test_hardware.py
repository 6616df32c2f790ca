"""The inventory schema: what an agent may register, and the field named when it may not."""

from __future__ import annotations

import pytest

from provisiond.errors import Invalid
from provisiond.hardware import parse_inventory

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
