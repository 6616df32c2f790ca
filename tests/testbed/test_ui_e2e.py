"""The operator UI end to end in headless Chromium against a real daemon.

A ``provisiond serve`` subprocess on loopback; one resource made idle through
the real agent API (``/boot/<mac>.ipxe`` mints the token, ``/agent/v1/register``
registers address and host key); a real dropbear SSH server plays the
resource's sshd on ``127.0.0.<n>:22`` (started in a private mount namespace
in which a temporary directory is bind-mounted over ``/root``, so that its
``.ssh/authorized_keys`` holds the daemon's key without touching the host's).
Selenium drives Debian's ``chromium`` through ``/usr/bin/chromedriver`` (no
browser download). Screenshots land in ``artifacts/ui/``.

Flow: log in; the dashboard counts one idle resource; find it in the resource
list; open the web shell and run a command; assign an image in sanboot mode
and watch the appliance page follow its deploy job. The job reaching
``active`` needs a machine that really boots the iSCSI disk: that is the QEMU
variant of this test, which needs vm-testbed (see the report in BENCHMARKS.md).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from provisiond.db import Database
from provisiond.model import Image, Kernel
from tests.conftest import write_config
from tests.interop.test_daemon import Daemon

REPO = Path(__file__).resolve().parents[2]
ART = REPO / "artifacts" / "ui"
MAC = "52:54:00:12:34:56"
SSH_IP = "127.0.0.77"


def _skip_reasons() -> list[str]:
    out = []
    for tool, pkg in (("chromium", "chromium"), ("chromedriver", "chromium-driver"),
                      ("dropbear", "dropbear-bin"), ("dropbearkey", "dropbear-bin"),
                      ("unshare", "util-linux")):  # fmt: skip
        if not shutil.which(tool):
            out.append(f"{tool} missing (apt-get install {pkg})")
    try:
        import selenium  # noqa: F401
    except ImportError:
        out.append("PyPI package selenium missing (.venv/bin/pip install selenium)")
    if not (REPO / "web/static/vendor/xterm.js").exists():
        out.append("front-end assets not vendored (run: bash web/vendor.sh)")
    return out


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
    with db.session() as s:
        s.add(Kernel(name="agent", kernel_path="kernels/agent/vmlinuz",
                     initrd_path="kernels/agent/initrd.img", is_default=True))  # fmt: skip
        s.add(Image(name="debian-12", size=2 * 2**30, sha256="ab" * 32, state="ready"))
    db.dispose()
    yield d
    if d.proc and d.proc.poll() is None:
        d.stop()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                 f"--user-data-dir={tmp_path / 'chromium'}"):  # fmt: skip
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    drv.implicitly_wait(5)
    yield drv
    drv.quit()


def _register(d: Daemon, hostkey: str) -> None:
    status, body = d.get(f"/boot/{MAC.replace(':', '-')}.ipxe")
    token = re.search(r"provisiond\.token=(\S+)", body.decode()).group(1)
    inv = {"cpu": {"count": 4}, "memory_bytes": 8 * 2**30, "nics": [{"mac": MAC}]}
    status, body = d.request("POST", "/agent/v1/register", token=token,
                             body={"mac": MAC, "ip": SSH_IP, "hostkey": hostkey,
                                   "inventory": inv})  # fmt: skip
    assert status == 200 and json.loads(body)["state"] == "idle", body


def _shot(drv, name: str) -> None:
    ART.mkdir(parents=True, exist_ok=True)
    drv.save_screenshot(str(ART / f"{name}.png"))


def _wait(pred, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_login_shell_and_assign_in_chromium(daemon, sshd, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    home, hostkey = sshd
    (home / ".ssh" / "authorized_keys").write_text(
        daemon.cfg.ssh_key_path.with_suffix(".pub").read_text()
    )
    daemon.start()
    _register(daemon, hostkey)
    base, drv = daemon.base, browser

    drv.get(base + "/resources")
    assert "/login" in drv.current_url
    drv.find_element(By.ID, "name").send_keys("admin")
    drv.find_element(By.ID, "password").send_keys("wrong password")
    drv.find_element(By.ID, "login").click()
    assert "Wrong user name or password" in drv.find_element(By.CLASS_NAME, "error").text
    drv.find_element(By.ID, "name").clear()
    drv.find_element(By.ID, "name").send_keys("admin")
    drv.find_element(By.ID, "password").send_keys(daemon.password)
    drv.find_element(By.ID, "login").click()
    assert drv.current_url.endswith("/resources")
    drv.get(base + "/")
    assert drv.find_element(By.ID, "count-idle").text.startswith("1")
    _shot(drv, "01-dashboard")

    drv.get(base + "/resources?q=" + MAC)
    row = drv.find_element(By.CSS_SELECTOR, "tr[data-resource]")
    assert "idle" in row.text and SSH_IP in row.text
    row.find_element(By.TAG_NAME, "a").click()
    _shot(drv, "02-resource")

    drv.find_element(By.ID, "webshell").click()
    _wait(lambda: drv.find_element(By.ID, "terminal").get_attribute("data-session"),
          what="the web shell to connect")  # fmt: skip
    drv.execute_script("window.provisiondShell.send('echo web$((6*7))shell; hostname\\r')")
    text = _wait(lambda: (t := drv.execute_script("return window.provisiondShell.text()"))
                 and "web42shell" in t and t, what="the command's output")  # fmt: skip
    assert "web42shell" in text
    _shot(drv, "03-webshell")
    drv.find_element(By.ID, "shell-close").click()

    drv.get(base + "/resources?q=" + MAC)
    drv.find_element(By.CSS_SELECTOR, "tr[data-resource] a").click()
    drv.find_element(By.ID, "assign").click()
    Select(drv.find_element(By.ID, "image")).select_by_value("debian-12")
    drv.find_element(By.ID, "mode-sanboot").click()
    drv.find_element(By.ID, "review").click()
    _shot(drv, "04-assign-confirm")
    drv.find_element(By.ID, "confirm").click()
    errors = drv.find_elements(By.CLASS_NAME, "error")
    assert not errors, [e.text for e in errors]
    assert "/appliances/" in drv.current_url
    state = drv.find_element(By.ID, "appliance-state").text
    assert state in ("starting", "active", "failed")
    assert drv.find_elements(By.CSS_SELECTOR, "tr.job")
    _shot(drv, "05-appliance")

    status, _ = daemon.request("GET", "/api/v1/events?q=webshell&limit=10")
    assert status == 401  # the API needs a token or a session
    ev = daemon.cli("event", "list", "--json", "--limit", "50")
    actions = [e["action"] for e in json.loads(ev.stdout)]
    assert "resource.webshell.open" in actions and "resource.webshell.close" in actions
    assert "appliance.created" in actions
