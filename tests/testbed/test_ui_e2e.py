"""The operator UI end to end in headless Chromium against a real daemon.

A ``provisiond serve`` subprocess on loopback; one resource made idle through
the real agent API (no DHCP on loopback, so the operator enrols it:
``provisiond resource enroll`` issues the token; ``/agent/v1/register``, sent
by curl from the resource's address, registers address and host key); a real
dropbear SSH server plays the resource's sshd on ``127.0.0.<n>:22`` (started
in a private mount namespace in which a temporary directory is bind-mounted
over ``/root``, so that its ``.ssh/authorized_keys`` holds the daemon's key
without touching the host's). Selenium drives Debian's ``chromium`` through
``/usr/bin/chromedriver`` (no browser download). Screenshots land in ``artifacts/ui/``.

Flow: log in; the dashboard counts one idle resource; find it in the resource
list; open the web shell and run a command; assign an image in sanboot mode
and watch the appliance page follow its deploy job. The job reaching
``active`` needs a machine that really boots the iSCSI disk: that is the QEMU
variant of this test, which needs vm-testbed (see the report in BENCHMARKS.md).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from provisiond.db import Database
from provisiond.model import Image, Kernel
from tests.conftest import write_config
from tests.daemonlab import Daemon
from tests.testbed.ui_flow import assign, chromium, login, open_resource, shell_run, shot
from tests.testbed.vmlab import _skip_reasons

REPO = Path(__file__).resolve().parents[2]
ART = REPO / "artifacts" / "ui"
MAC = "52:54:00:12:34:56"
SSH_IP = "127.0.0.77"


pytestmark = [
    pytest.mark.skipif(bool(_skip_reasons()), reason="; ".join(_skip_reasons())),
    pytest.mark.timeout(240),
]


@pytest.fixture
def sshd(tmp_path):
    """dropbear on SSH_IP:22 with a fresh host key; yields the host key line."""
    home = tmp_path / "root-home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    key = tmp_path / "hostkey"
    subprocess.run(["dropbearkey", "-t", "ed25519", "-f", str(key)], check=True,
                   capture_output=True)  # fmt: skip
    pub = subprocess.run(["dropbearkey", "-y", "-f", str(key)], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    line = next(x for x in pub.splitlines() if x.startswith("ssh-ed25519"))
    script = (f"mount --bind {home} /root && exec dropbear -F -E -s -m -p {SSH_IP}:22 "
              f"-r {key} -P {tmp_path}/dropbear.pid")  # fmt: skip
    with open(tmp_path / "dropbear.log", "wb") as log:
        proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                stdout=log, stderr=log)  # fmt: skip
        yield home, " ".join(line.split()[:2])
        proc.terminate()
        proc.wait(5)


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(write_config(tmp_path))
    init = d.cli("init")
    assert init.returncode == 0, init.stderr
    d.password = re.search(r"store it now\): (\S+)", init.stdout).group(1)
    db = Database(d.cfg.database_url)
    with db.transaction() as s:
        s.add(Kernel(name="agent", kernel_path="kernels/agent/vmlinuz",
                     initrd_path="kernels/agent/initrd.img", is_default=True))  # fmt: skip
        s.add(Image(name="debian-12", size=2 * 2**30, sha256="ab" * 32, state="ready"))
    db.dispose()
    yield d
    if d.proc and d.proc.poll() is None:
        d.stop()


@pytest.fixture
def browser(tmp_path):
    drv = chromium(tmp_path / "chromium")
    yield drv
    drv.quit()


def _register(d: Daemon, hostkey: str) -> None:
    token = json.loads(d.cli("resource", "enroll", MAC, "--json").stdout)["token"]
    inv = {"cpu": {"count": 4}, "memory_bytes": 8 * 2**30, "nics": [{"mac": MAC}]}
    body = json.dumps({"mac": MAC, "ip": SSH_IP, "hostkey": hostkey, "inventory": inv})
    # the registered address is the request's source: send it from SSH_IP
    out = subprocess.run(["curl", "-s", "--interface", SSH_IP, "-H",
                          f"Authorization: Bearer {token}",
                          "-H", "Content-Type: application/json", "--data-binary", body,
                          d.agent_base + "/agent/v1/register"],
                         capture_output=True, text=True, timeout=30).stdout  # fmt: skip
    assert json.loads(out)["state"] == "idle", out


def test_login_shell_and_assign_in_chromium(daemon, sshd, browser):
    from selenium.webdriver.common.by import By

    home, hostkey = sshd
    (home / ".ssh" / "authorized_keys").write_text(
        daemon.cfg.ssh_key_path.with_suffix(".pub").read_text()
    )
    daemon.start()
    _register(daemon, hostkey)
    base, drv = daemon.base, browser

    drv.get(base + "/resources")
    assert "/login" in drv.current_url
    login(drv, "admin", "wrong password")
    assert "Wrong user name or password" in drv.find_element(By.CLASS_NAME, "error").text
    login(drv, "admin", daemon.password)
    assert drv.current_url.endswith("/resources")
    drv.get(base + "/")
    assert drv.find_element(By.ID, "count-idle").text.startswith("1")
    shot(drv, ART, "01-dashboard")

    row = open_resource(drv, base, MAC)
    assert "idle" in row and SSH_IP in row
    shot(drv, ART, "02-resource")
    text = shell_run(drv, "echo web$((6*7))shell; hostname", "web42shell")
    assert "web42shell" in text
    shot(drv, ART, "03-webshell")
    drv.find_element(By.ID, "shell-close").click()

    open_resource(drv, base, MAC)
    assign(drv, "debian-12", "sanboot", lambda: shot(drv, ART, "04-assign-confirm"))
    state = drv.find_element(By.ID, "appliance-state").text
    assert state in ("starting", "active", "failed")
    assert drv.find_elements(By.CSS_SELECTOR, "tr.job")
    shot(drv, ART, "05-appliance")

    status, _ = daemon.request("GET", "/api/v1/events?q=webshell&limit=10")
    assert status == 401  # the API needs a token or a session
    ev = daemon.cli("event", "list", "--json", "--limit", "50")
    actions = [e["action"] for e in json.loads(ev.stdout)]
    assert "resource.webshell.open" in actions and "resource.webshell.close" in actions
    assert "appliance.created" in actions
