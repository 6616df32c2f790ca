"""Installer mode (Cobbler-style) against the real daemon: boot policy, answer file, 404 after.

A registered idle machine gets a ``template`` appliance with the
``debian-preseed`` set and an installer Kernel. Starting it renders the set
(a missing variable fails the job before any reboot), queues a reboot for
the agent and makes the boot script load the installer kernel with
``auto url=<per-resource one-time URL>``. That URL serves the rendered
preseed (logged in provisiond's HTTP log) while the machine installs; the
installer's call back with the same token makes the appliance ``active``,
the boot script turns to the local disk and the URL answers 404.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from provisiond.db import Database
from provisiond.model import Kernel
from tests.daemonlab import HOSTKEY, _enroll, _register_kernel
from tests.daemonlab import daemon as daemon

pytestmark = pytest.mark.interop
MAC = "52:54:00:d1:00:01"


def register(d) -> None:
    token = _enroll(d, MAC)  # loopback has no DHCP boot: the operator enrolls it
    body = {"mac": MAC, "ip": "10.77.0.150", "hostkey": HOSTKEY,
            "inventory": {"disks": [{"name": "sda"}], "firmware": "bios"}}  # fmt: skip
    assert d.request("POST", "/agent/v1/register", body, token)[0] == 200


def installer_kernel(d) -> None:
    db = Database(d.cfg.database_url)
    with db.transaction() as s:
        s.add(Kernel(name="d-i", kernel_path="kernels/d-i/linux",
                     initrd_path="kernels/d-i/initrd.gz", cmdline="vga=normal"))  # fmt: skip
    db.dispose()


def cli_ok(d, *args: str) -> str:
    res = d.cli(*args)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def wait_for(fn, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {fn}")


def appliance_params(d, name: str) -> dict:
    """The appliance's stored parameters, read from the database as the daemon wrote them."""
    from provisiond.model import Appliance

    db = Database(d.cfg.database_url)
    try:
        with db.transaction() as s:
            app = s.query(Appliance).filter_by(name=name).one_or_none()
            return dict(app.params) if app else {}
    finally:
        db.dispose()


def script(d) -> str:
    return d.get(f"/boot/{MAC.replace(':', '-')}.ipxe")[1].decode()


def start_installer(d, name: str, *params: str) -> None:
    """An idle machine, the d-i installer Kernel, a debian-preseed appliance started."""
    _register_kernel(d)
    installer_kernel(d)
    d.start()
    register(d)
    extra = [a for p in params for a in ("--param", p)]
    cli_ok(d, "appliance", "create", "--resource", MAC, "--mode", "template", "--kernel", "d-i",
           "--name", name, "--param", "template=debian-preseed", *extra)  # fmt: skip
    cli_ok(d, "appliance", "start", name)


def test_preseed_served_only_while_installing(daemon):
    d = daemon
    start_installer(d, "inst1", "mirror_host=mirror.example")

    params = wait_for(lambda: (p := appliance_params(d, "inst1")).get("install_cmdline") and p)
    # the installer script carries the one-time answer-file URL: it goes only to the address
    # DHCP gave this machine in this boot, and loopback had no DHCP boot
    status, refused = d.get(f"/boot/{MAC.replace(':', '-')}.ipxe")
    assert status == 403 and b"no installer script" in refused, refused
    assert b"preseed" not in refused
    text = params["install_cmdline"]
    assert params["install_kernel"].endswith("d-i/linux"), params
    url = re.search(r"url=(http://\S+/preseed\.cfg)", text).group(1)
    assert "vga=normal" in text and "priority=critical" in text and "hostname=inst1" in text
    path = "/" + url.split("/", 3)[3]
    res_id, token = path.split("/")[3:5]
    jobs = json.loads(cli_ok(d, "job", "list", "--json"))
    assert any(j["kind"] == "agent.reboot" for j in jobs), jobs  # the agent boots the installer

    status, body = d.get(path)
    assert status == 200, body
    assert b"d-i netcfg/get_hostname string inst1" in body
    assert token.encode() in body  # the late command reports in with the same token
    assert d.get(path.replace(token, "x" * len(token)))[0] == 404
    assert d.get(f"/install/v1/{int(res_id) + 1}/{token}/preseed.cfg")[0] == 404
    assert d.get(f"/install/v1/{res_id}/{token}/../../etc/passwd")[0] == 404
    keys = d.get(f"/install/v1/{res_id}/{token}/authorized_keys")
    assert keys[0] == 200 and keys[1].startswith(b"ssh-ed25519 ")
    assert "answer file preseed.cfg served to resource" in d.log.read_text()
    # the preseed's early command reports that the installer read it
    early = re.search(r"early_command string wget -q -O /dev/null (\S+)", body.decode()).group(1)
    assert early == url.rsplit("/", 1)[0] + "/progress/preseed-loaded"
    assert d.get("/" + early.split("/", 3)[3]) == (200, b"recorded: preseed-loaded\n")
    bad_token = path.replace(token, "y" * len(token)).rsplit("/", 1)[0]
    assert d.get(f"{bad_token}/progress/preseed-loaded")[0] == 404
    assert d.get(path.rsplit("/", 1)[0] + "/progress/Bad%20Step")[0] == 400
    start_id = next(j["id"] for j in json.loads(cli_ok(d, "job", "list", "--json"))
                    if j["kind"] == "appliance.start")  # fmt: skip
    shown = json.loads(cli_ok(d, "job", "show", str(start_id), "--json"))
    assert "installer of " in shown["log"] and ": preseed-loaded" in shown["log"], shown["log"]

    status, out = d.request("POST", "/install/v1/done", b"hostname=inst1", token,
                            {"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert status == 200, out
    app = wait_for(lambda: (a := json.loads(cli_ok(d, "appliance", "show", "inst1", "--json")))
                   and a["state"] == "active" and a)  # fmt: skip
    assert "install_cmdline" not in app["params"], app  # the one-time URL is not shown
    start = [j for j in json.loads(cli_ok(d, "job", "list", "--json"))
             if j["kind"] == "appliance.start"]  # fmt: skip
    wait_for(lambda: json.loads(cli_ok(d, "job", "show", str(start[0]["id"]), "--json"))
             ["state"] == "succeeded")  # fmt: skip
    assert "booting from the local disk" in script(d)
    assert d.get(path)[0] == 404  # not installing any more


def test_missing_variable_fails_before_any_reboot(daemon):
    d = daemon
    start_installer(d, "inst2")
    app = wait_for(lambda: (a := json.loads(cli_ok(d, "appliance", "show", "inst2", "--json")))
                   and a["state"] == "failed" and a)  # fmt: skip
    assert "debian-preseed/preseed.cfg" in app["state_reason"]
    assert "variable 'mirror_host' is undefined" in app["state_reason"]
    jobs = json.loads(cli_ok(d, "job", "list", "--json"))
    assert not any(j["kind"] == "agent.reboot" for j in jobs), jobs
    assert "installer" not in script(d)


def test_windows_installer_boots_with_the_answer_file_as_an_initrd(daemon):
    """WinPE via wimboot: the one-time answer URL and startnet.cmd are extra initrds."""
    d = daemon
    _register_kernel(d)
    db = Database(d.cfg.database_url)
    with db.transaction() as s:
        s.add(Kernel(name="winpe", kernel_path="kernels/winpe/wimboot",
                     initrd_path="kernels/winpe/boot.wim", cmdline=""))  # fmt: skip
    db.dispose()
    d.start()
    register(d)
    cli_ok(d, "appliance", "create", "--resource", MAC, "--mode", "template", "--kernel", "winpe",
           "--name", "win1", "--param", "template=windows-unattend",
           "--param", "windows_admin_password=Adm1n-Secret",
           "--param", "windows_share=\\\\10.77.0.1\\win2022")  # fmt: skip
    shown = json.loads(cli_ok(d, "appliance", "show", "win1", "--json"))
    assert "Adm1n-Secret" not in json.dumps(shown)
    cli_ok(d, "appliance", "start", "win1")
    params = wait_for(lambda: (p := appliance_params(d, "win1")).get("install_initrds") and p)
    assert params["windows_admin_password"].startswith("sealed:v1:")  # sealed at rest
    wim, answer, startnet = params["install_initrds"]
    assert wim == "kernels/winpe/boot.wim"
    assert answer.endswith("/autounattend.xml") and startnet.endswith("/startnet.cmd")
    status, xml = d.get("/" + answer.split("/", 3)[3])
    assert status == 200 and b"<Value>Adm1n-Secret</Value>" in xml  # opened only for the machine
    status, cmd = d.get("/" + startnet.split("/", 3)[3])
    assert status == 200 and b"net use S: \\\\10.77.0.1\\win2022\n" in cmd, cmd
