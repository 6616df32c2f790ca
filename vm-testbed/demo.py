"""``make demo``: provisiond in a private test bed, one machine PXE-boots to idle.

Owns the demo's story, nothing else: test bed up, config written, provisiond
initialised and serving inside the namespace, agent initrd built if missing,
one QEMU machine booted, wait until ``provisiond resource list`` shows it
``idle``, print the list and how to log in, then keep running until Ctrl-C
(``DEMO_EXIT=1``: tear down at once, for CI). Teardown always runs.

Environment: DEMO_NS (default pvdemo), DEMO_WORKDIR (default
/tmp/provisiond-demo; the state there, e.g. the built initrd, survives runs),
DEMO_NIC (virtio-net-pci | e1000), DEMO_TIMEOUT (seconds to idle, default 300).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from testbed import Testbed, wait_until

MAC = "52:54:00:de:00:01"


def say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def cli(tb: Testbed, *args: str, timeout: float = 120) -> str:
    r = tb.provisiond_cli(*args, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"demo: provisiond {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
    return r.stdout


def ensure_initrd(tb: Testbed) -> None:
    try:
        kernels = json.loads(cli(tb, "kernel", "list", "--json") or "[]")
    except json.JSONDecodeError:
        kernels = []
    if kernels:
        say(f"agent kernel present: {kernels[0].get('name', '?')}")
        return
    say("building the agent initrd (provisiond initrd build) ...")
    print(cli(tb, "initrd", "build", timeout=600), end="")


def resource_state(tb: Testbed, mac: str) -> str | None:
    r = tb.provisiond_cli("resource", "list", "--json")
    try:
        rows = json.loads(r.stdout)
    except json.JSONDecodeError:
        return None
    return next((row.get("state") for row in rows if row.get("mac") == mac), None)


def run(tb: Testbed) -> str:
    config = tb.provisiond_config()
    tb.write_config(config)
    print(cli(tb, "init"), end="")
    ensure_initrd(tb)
    say("starting provisiond serve inside the namespace ...")
    tb.start_provisiond(config)
    say(f"provisiond healthy at http://{tb.address}:8080 (log {tb.workdir}/provisiond.log)")
    if resource_state(tb, MAC) is not None:  # a previous demo's machine: start afresh
        tb.provisiond_cli("resource", "rm", MAC)
    nic = os.environ.get("DEMO_NIC", "virtio-net-pci")
    vm = tb.boot_vm("demo1", MAC, nic=nic, disks=["2G"])
    say(f"machine demo1 ({nic}, {MAC}) booting; console: {vm.log_path}")
    timeout = float(os.environ.get("DEMO_TIMEOUT", "300"))
    try:
        wait_until(lambda: resource_state(tb, MAC) == "idle", timeout, interval=2)
    except TimeoutError:
        raise SystemExit(f"demo: demo1 not idle within {timeout:.0f} s; console:\n{vm.tail(30)}")
    say(f"demo1 is idle after {time.time() - vm.started:.1f} s")
    print(cli(tb, "resource", "list"), end="")
    rows = json.loads(cli(tb, "resource", "list", "--json"))
    return next(row.get("name") or row.get("id") for row in rows if row.get("mac") == MAC)


def main() -> int:
    ns = os.environ.get("DEMO_NS", "pvdemo")
    workdir = Path(os.environ.get("DEMO_WORKDIR", "/tmp/provisiond-demo"))
    venv = os.environ.get("DEMO_VENV") or None
    with Testbed(workdir, ns_name=ns, venv=venv) as tb:
        name = run(tb)
        cfg = tb.workdir / "provisiond.toml"
        say("log in to the idle machine (the test-bed network lives in a namespace):")
        print(f"  nsenter --net=/run/netns/{ns} {tb.provisiond_bin} --config {cfg} login {name}")
        if os.environ.get("DEMO_EXIT") == "1":
            say("DEMO_EXIT=1: tearing down")
            return 0
        say("running; press Ctrl-C to tear everything down")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            say("tearing down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
