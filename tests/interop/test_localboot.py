"""A local deploy is ``active`` only once the written disk's OS is seen (issue 17).

The real daemon (``[local] confirm_boot``, its DHCP service in full mode on the
lab bridge) and the real agent script (tests/hostagent.py: a regular file as
its disk, power actions recorded) deploy an image; the test then plays the
rebooted machine with real peers in the client namespace: curl fetches the
local-boot script as iPXE would, busybox udhcpc is the booted OS's DHCP
client, curl posts the report-in read from the written disk's slot. The QEMU
test bed does the same with a real boot (tests/testbed/test_local_vm.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from provisiond import reportslot
from tests.hostagent import HostAgent
from tests.streamlab import MiB, agent_lab, job_of

pytestmark = [pytest.mark.interop, pytest.mark.timeout(240)]
MAC = "52:54:00:5c:00:01"
OS_VENDOR = "udhcp 1.36.1"  # what busybox udhcpc in a booted OS sends
BOOT_TIMEOUT = 20  # [local] boot_timeout


@pytest.fixture
def lab(tmp_path):
    # boot_timeout: the "never comes up" case waits it out; the other cases must finish their
    # steps (CLI calls, udhcpc, curl, a 3 s pause) well within it on a loaded machine
    local = f"confirm_boot = true\nboot_timeout = {BOOT_TIMEOUT}\nmax_script_fetches = 4"
    with agent_lab(tmp_path, "lboot", MAC, local) as (_lab, d, client, agent):
        yield d, client, agent(8 * MiB)


def make_image(path: Path, slot: bool) -> bytes:
    data = bytearray(b"\x5a" * 64 * 1024 + b"\0" * (4 * MiB - 64 * 1024))
    if slot:
        data[reportslot.OFFSET : reportslot.OFFSET + reportslot.SIZE] = reportslot.placeholder()
    path.write_bytes(bytes(data))
    return bytes(data)


def start(d, tmp_path, slot: bool) -> tuple[bytes, int]:
    image = make_image(tmp_path / "master.raw", slot)
    d.cli("image", "import", str(tmp_path / "master.raw"), "--name", "img")
    d.cli("appliance", "create", "--resource", MAC, "--image", "img", "--mode", "local",
          "--name", "loc", "--disk", "/dev/vda")  # fmt: skip
    return image, job_of(d.cli("appliance", "start", "loc").stdout)


def wait_written(d, agent: HostAgent, job: int) -> None:
    """Until the agent rebooted the machine and the daemon waits for its OS."""
    deadline = time.monotonic() + 60
    while "waiting for the booted OS" not in d.cli_json("job", "show", str(job))["log"]:
        assert time.monotonic() < deadline, (d.cli_json("job", "show", str(job)), agent.log())
        time.sleep(0.3)
    assert "reboot" in agent.power()


def state(d) -> str:
    return d.cli_json("appliance", "show", "loc")["state"]


def local_boot_script(d, client) -> str:
    code, text = d.boot_script(client, MAC)
    assert code == 200, text
    assert "booting from the local disk" in text, text  # the written disk, not the agent again
    return text


def test_without_a_slot_the_booted_os_dhcp_proves_the_boot_and_faults_fail(lab, tmp_path):
    """One machine, three attempts: a boot loop, a disk that never comes up, a good boot."""
    d, client, agent = lab
    image, job = start(d, tmp_path, slot=False)
    wait_written(d, agent, job)
    assert agent.disk.read_bytes()[: len(image)] == image
    for _ in range(4):  # iPXE: "local disk boot failed; retrying in 10 s", again and again
        local_boot_script(d, client)
    done = d.wait_job(job, timeout=15)
    assert done["state"] == "failed" and "boot loop" in done["outcome"], done
    assert "4 times" in done["outcome"], done
    # the failed machine PXE-boots into the agent again, not into its disk
    code, text = d.boot_script(client, MAC)
    assert code in (200, 403) and "booting from the local disk" not in text, text

    # start again: iPXE boots the disk ... which never comes up
    job = job_of(d.cli("appliance", "start", "loc").stdout)
    wait_written(d, agent, job)
    local_boot_script(d, client)
    t0 = time.monotonic()
    done = d.wait_job(job, timeout=60)
    assert done["state"] == "failed", done
    assert time.monotonic() - t0 < BOOT_TIMEOUT + 20  # polled once a second
    reason = done["outcome"]
    for words in ("wrote and verified img on /dev/vda",
                  f"no DHCP request from the booted OS within {BOOT_TIMEOUT} s",
                  "fetched its local-boot script 1 time since"):  # fmt: skip
        assert words in reason, reason
    app = d.cli_json("appliance", "show", "loc")
    assert app["state"] == "failed" and "no DHCP request" in app["state_reason"], app
    assert d.cli_json("resource", "show", MAC)["state"] == "failed"
    assert "no DHCP request from the booted OS" in d.cli("event", "list").stdout

    # fixed (say, the disk's boot order): start again; the whole chain runs again
    job = job_of(d.cli("appliance", "start", "loc").stdout)
    wait_written(d, agent, job)
    d.dhcp_boot(client, vendor=OS_VENDOR)  # before the local-boot script: not its OS yet
    d.dhcp_boot(client)  # the PXE ROM of the reboot: not an OS either
    local_boot_script(d, client)
    time.sleep(2)
    assert state(d) == "starting"
    d.dhcp_boot(client, vendor=OS_VENDOR)  # now the disk's OS asks for an address
    done = d.wait_job(job, timeout=30)
    assert done["state"] == "succeeded", done
    assert "DHCP client asked for" in done["outcome"] and OS_VENDOR in done["outcome"], done
    assert state(d) == "active"
    assert d.cli_json("resource", "show", MAC)["state"] == "active"


def test_an_image_with_a_slot_is_active_only_after_its_report_in(lab, tmp_path):
    d, client, agent = lab
    image, job = start(d, tmp_path, slot=True)
    wait_written(d, agent, job)
    disk = agent.disk.read_bytes()
    lo, hi = reportslot.OFFSET, reportslot.OFFSET + reportslot.SIZE
    assert disk[:lo] == image[:lo] and disk[hi : len(image)] == image[hi:]  # the rest verified
    record = reportslot.parse(disk[lo:hi])
    assert record and record["url"] == f"{d.base}/install/v1/done", disk[lo : lo + 200]
    token = record["token"]
    local_boot_script(d, client)
    d.dhcp_boot(client, vendor=OS_VENDOR)  # its OS is up, but this image must report in
    time.sleep(3)
    assert state(d) == "starting"
    code, text = d.http(client, "/install/v1/done", "POST", "hostname=web1",
                        {"Authorization": "Bearer wrong-token-0123456789"})  # fmt: skip
    assert code == 401 and state(d) == "starting", text
    code, text = d.http(client, "/install/v1/done", "POST", "hostname=web1",
                        {"Authorization": f"Bearer {token}"})  # fmt: skip
    assert code == 200, text
    done = d.wait_job(job, timeout=30)
    assert done["state"] == "succeeded" and "reported in as web1" in done["outcome"], done
    assert state(d) == "active"
    code, _ = d.http(client, "/install/v1/done", "POST", "hostname=web1",
                     {"Authorization": f"Bearer {token}"})  # fmt: skip
    assert code == 401  # one time only
    # the token went to the disk only: not in the job's log, its command, the events, the log
    seen = str(d.cli_json("job", "list")) + str(d.cli_json("job", "show", str(job)))
    seen += d.cli("event", "list").stdout + d.log.read_text()
    assert token not in seen
    assert not list((tmp_path / "state" / "installs").glob("local-*"))  # record file removed
