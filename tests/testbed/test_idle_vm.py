"""Idle resources end to end: QEMU machines PXE-boot through provisiond and go idle.

DHCP -> iPXE -> /boot/<mac>.ipxe -> agent kernel + initrd (built by
``provisiond initrd build``) -> registration with an inventory that matches
QEMU's -m, -smp, disk and MAC -> ``provisiond run`` over SSH with the pinned
host key -> a changed key is refused -> a killed machine goes offline.
"""

from __future__ import annotations

import json
import re

import pytest
from testbed import wait_until

pytestmark = pytest.mark.testbed

MAC1, MAC2 = "52:54:00:7e:00:01", "52:54:00:7e:00:02"
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDk7nSx0ucIm2yZ0FuvAOZSnD0LNZ7v1zJ6Ju2Kb2W5X x"


def cli_json(tb, *args: str):
    res = tb.provisiond_cli(*args, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout)


def test_two_machines_become_idle_answer_run_and_go_offline(testbed):
    tb = testbed
    config = tb.provisiond_config(heartbeat_interval=2).replace(
        "heartbeat_timeout = 60", "heartbeat_timeout = 15"
    )
    tb.start_provisiond(config)
    build = tb.provisiond_cli("initrd", "build", timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    assert "registered kernel 'agent'" in build.stdout
    kernels = cli_json(tb, "kernel", "list")
    assert [(k["name"], k["is_default"]) for k in kernels] == [("agent", True)]

    vm1 = tb.boot_vm("idle1", MAC1, nic="virtio-net-pci", mem=512, smp=2, disks=["96M"])
    vm2 = tb.boot_vm("idle2", MAC2, nic="e1000", mem=384)
    for mac in (MAC1, MAC2):
        wait_until(lambda m=mac: tb.resource_state(m) == "idle", 120, interval=0.5)
    vm1.wait_for(r"PROVISIOND-AGENT-UP", 30)
    assert "provisiond.token" not in vm1.console_text()

    r1 = cli_json(tb, "resource", "show", MAC1)
    r2 = cli_json(tb, "resource", "show", MAC2)
    assert r1["name"] != r2["name"] and r1["ip"] != r2["ip"]
    inv = r1["inventory"]
    assert inv["cpu"]["count"] == 2
    assert 400 * 2**20 < inv["memory_bytes"] <= 512 * 2**20
    assert any(d["size_bytes"] == 96 * 2**20 for d in inv["disks"]), inv["disks"]
    assert MAC1 in [n["mac"] for n in inv["nics"]]
    assert inv["firmware"] == "bios"
    assert r1["hostkey_fingerprint"].startswith("SHA256:")

    # one command over SSH with the pinned key; its exit code comes back
    res = tb.provisiond_cli("run", r1["name"], "--", "uname", "-r")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == kernels[0]["version"]
    assert tb.provisiond_cli("run", MAC1, "--", "exit 3").returncode == 3
    events = cli_json(tb, "event", "list")
    assert any(e["action"] == "resource.run" and "uname" in e["detail"] for e in events)

    # an interactive root shell (stdin from a pipe here; a terminal works the same)
    prov, cfg = str(tb.provisiond_bin), str(tb.workdir / "provisiond.toml")
    login = tb.run_in_ns([prov, "--config", cfg, "login", r1["name"]], check=False, timeout=60,
                         input="echo LOGIN-$((6*7))\nexit\n")  # fmt: skip
    assert login.returncode == 0 and "LOGIN-42" in login.stdout, login.stdout + login.stderr
    events = cli_json(tb, "event", "list")
    assert any(e["action"] == "resource.login" for e in events)

    # DNS answers the resource's name with its address
    dig = tb.run_in_ns(["dig", f"@{tb.address}", f"{r1['name']}.lab.test", "+short"], check=False)
    assert dig.stdout.strip() == r1["ip"]

    # a changed host key is refused (no auto-accept)
    db = tb.workdir / "state" / "provisiond.db"
    import sqlite3

    with sqlite3.connect(db) as con:
        con.execute("UPDATE resource SET hostkey = ? WHERE mac = ?", (OTHER_KEY, MAC1))
    res = tb.provisiond_cli("run", MAC1, "--", "true")
    assert res.returncode != 0 and re.search(r"refusing", res.stderr), res.stderr

    # a machine that stops heartbeating becomes offline
    vm2.kill()
    wait_until(lambda: tb.resource_state(MAC2) == "offline", 40, interval=0.5)
    assert tb.resource_state(MAC1) == "idle"
