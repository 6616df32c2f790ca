"""The redfish power driver against real HTTP Redfish services on loopback.

Two peers: tests/redfish_sim.py (sessions, Basic, bad credentials, session
expiry) and sushy-tools' emulator with its fake system driver (OpenStack's
Redfish emulator; Basic auth from an htpasswd file, no session service, power
changes that take 1-11 s like real hardware).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provisiond.power import (
    BadCredentials,
    BmcUnreachable,
    PowerAction,
    PowerSettings,
    PowerState,
    driver_for,
    redfish,
)
from tests.conftest import free_port
from tests.redfish_sim import RedfishSim

pytestmark = pytest.mark.interop
A = PowerAction


@pytest.fixture(autouse=True)
def _fresh_sessions():
    redfish.forget_sessions()
    yield
    redfish.forget_sessions()


def settings(url: str, password: str = "s3cret", **options) -> PowerSettings:
    return PowerSettings(driver="redfish", address=url, user="admin", password=password,
                         options=options, timeout=5)  # fmt: skip


def test_session_login_is_made_once_and_reused():
    with RedfishSim(1) as sim:
        bmc, url = sim.bmcs[0], sim.urls()[0]
        d = driver_for(settings(url))
        assert d.status() == PowerState.OFF
        d.act(A.ON)
        assert bmc.power == "On" and bmc.resets == ["On"]
        assert driver_for(settings(url)).status() == PowerState.ON  # a new driver, same session
        d.act(A.CYCLE)
        d.act(A.OFF)
        assert bmc.resets == ["On", "PowerCycle", "ForceOff"]
        assert bmc.logins == 1


def test_expired_session_logs_in_again():
    with RedfishSim(1) as sim:
        bmc = sim.bmcs[0]
        d = driver_for(settings(sim.urls()[0]))
        d.status()
        bmc.tokens.clear()  # the BMC forgot every session (reboot, timeout)
        assert d.status() == PowerState.OFF
        assert bmc.logins == 2


def test_basic_auth_when_the_bmc_has_no_session_service():
    with RedfishSim(1, sessions=False) as sim:
        bmc = sim.bmcs[0]
        d = driver_for(settings(sim.urls()[0]))
        d.act(A.ON)
        assert bmc.power == "On" and bmc.logins == 0


@pytest.mark.parametrize("sessions", [True, False])
def test_wrong_password_is_bad_credentials(sessions):
    with RedfishSim(1, sessions=sessions) as sim:
        with pytest.raises(BadCredentials, match="refused user 'admin'") as info:
            driver_for(settings(sim.urls()[0], password="wrong-Pw")).status()
        assert "wrong-Pw" not in str(info.value)
        assert sim.bmcs[0].resets == []


def test_unreachable_bmc():
    url = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(BmcUnreachable, match="cannot connect"):
        driver_for(settings(url)).act(A.ON)
    assert time.monotonic() - t0 < 5


def test_https_with_an_untrusted_certificate_is_refused(tmp_path):
    """A BMC whose certificate is not trusted is not given the password."""
    if not shutil.which("openssl"):
        pytest.skip(reason="needs openssl to make a certificate")
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)  # fmt: skip
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", _TLS_SERVER, str(port), str(cert), str(key)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert server.stdout.readline().strip() == "ready"
        from provisiond.power import PowerError

        with pytest.raises(PowerError, match="TLS failed"):
            driver_for(settings(f"127.0.0.1:{port}")).status()
        assert server.stdout is not None
    finally:
        server.kill()
        server.wait()


_TLS_SERVER = """
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
s = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
while True:
    c, _ = s.accept()
    try:
        t = ctx.wrap_socket(c, server_side=True)
        data = t.recv(65536)
        if b"Password" in data:
            print("LEAKED", flush=True)
        t.close()
    except OSError:
        c.close()
"""


# --- sushy-tools' emulator --------------------------------------------------


def _htpasswd(path: Path, user: str, password: str) -> None:
    import bcrypt

    digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"{user}:{digest}\n")


@pytest.fixture
def sushy(tmp_path):
    exe = Path(sys.executable).with_name("sushy-emulator")
    if not exe.exists():
        pytest.skip(reason="needs sushy-tools (pip install sushy-tools; in the test extras)")
    _htpasswd(tmp_path / "htpasswd", "admin", "s3cret")
    (tmp_path / "state").mkdir()
    conf = tmp_path / "emulator.conf"
    conf.write_text(
        f"SUSHY_EMULATOR_AUTH_FILE = {str(tmp_path / 'htpasswd')!r}\n"
        f"SUSHY_EMULATOR_STATE_DIR = {str(tmp_path / 'state')!r}\n"
        "SUSHY_EMULATOR_FAKE_DRIVER = True\n"
        "SUSHY_EMULATOR_FAKE_SYSTEMS = [{'uuid': '27946b59-9e44-4fa7-8e91-f3527a1ef094',\n"
        "  'name': 'node-1', 'power_state': 'Off', 'external_notifier': False,\n"
        "  'nics': [{'mac': '52:54:00:12:34:56', 'ip': '10.0.0.10'}]}]\n"
    )
    port = free_port()
    log = open(tmp_path / "sushy.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([str(exe), "--config", str(conf), "-i", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with __import__("socket").create_connection(("127.0.0.1", port), 0.5):
                    break
            except OSError:
                assert proc.poll() is None, (tmp_path / "sushy.log").read_text()
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _wait_state(d, want: PowerState, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while (got := d.status()) != want:
        assert time.monotonic() < deadline, f"power state still {got}, wanted {want}"
        time.sleep(0.5)


def test_sushy_emulator_power_on_cycle_off(sushy):
    d = driver_for(settings(sushy))  # no session service there: Basic
    assert d.status() == PowerState.OFF
    d.act(A.ON)
    _wait_state(d, PowerState.ON)
    d.act(A.CYCLE)  # sushy allows no PowerCycle: ForceRestart
    _wait_state(d, PowerState.ON)
    d.act(A.OFF)
    _wait_state(d, PowerState.OFF)


def test_sushy_emulator_wrong_password(sushy):
    with pytest.raises(BadCredentials):
        driver_for(settings(sushy, password="nope")).status()
