"""The systemd unit: ``provisiond systemd-unit`` passes ``systemd-analyze verify``, and
``Type=notify`` holds: ``serve`` sends ``READY=1`` to ``$NOTIFY_SOCKET`` once it listens.

Owns checking the shipped ``provisiond/provisiond.service`` as printed for this
installation (ExecStart names this venv's console script), and the daemon's
side of the notify protocol with a real unix datagram socket standing in for
the service manager.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import write_config

pytestmark = pytest.mark.interop
PROVISIOND = str(Path(sys.executable).with_name("provisiond"))


def _unit(tmp_path: Path, *args: str) -> str:
    res = subprocess.run([PROVISIOND, "--config", str(tmp_path / "p.toml"), "systemd-unit", *args],
                         capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return res.stdout


def test_unit_names_this_installation_and_its_config(tmp_path):
    text = _unit(tmp_path)
    assert f"ExecStart={PROVISIOND} --config {tmp_path / 'p.toml'} serve" in text
    for line in ("Type=notify", "Restart=on-failure", "NoNewPrivileges=yes",
                 "ProtectSystem=full", "WantedBy=multi-user.target"):  # fmt: skip
        assert line in text.splitlines(), line
    spaced = _unit(tmp_path, "--exec", "/opt/my tools/provisiond")
    assert 'ExecStart="/opt/my tools/provisiond" --config' in spaced


def _verify(unit: Path) -> tuple[int, list[str]]:
    """systemd-analyze verify: exit code and the lines about this unit."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip(reason="needs systemd-analyze (apt-get install systemd)")
    res = subprocess.run([analyze, "verify", "--man=no", str(unit)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    return res.returncode, [x for x in (res.stdout + res.stderr).splitlines() if unit.name in x]


def test_systemd_analyze_verify(tmp_path):
    unit = tmp_path / "provisiond.service"
    unit.write_text(_unit(tmp_path))
    code, problems = _verify(unit)
    assert code == 0 and not problems, problems


def test_verify_rejects_a_broken_unit(tmp_path):
    """The check above can fail: a misspelt directive in the same unit is reported."""
    unit = tmp_path / "provisiond.service"
    unit.write_text(_unit(tmp_path).replace("Restart=on-failure", "Restart=on-failur"))
    _code, problems = _verify(unit)
    assert any("restart specifier" in x for x in problems), problems


def test_serve_notifies_ready_then_stopping(tmp_path):
    cfg = write_config(tmp_path)
    http_port = next(int(x.split("=")[1]) for x in cfg.read_text().splitlines()
                     if x.startswith("http_port"))  # fmt: skip
    subprocess.run([PROVISIOND, "--config", str(cfg), "init"], check=True, capture_output=True,
                   timeout=120)  # fmt: skip
    sock_path = tmp_path / "notify.sock"
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(sock_path))
    manager.settimeout(60)
    env = {"NOTIFY_SOCKET": str(sock_path), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([PROVISIOND, "--config", str(cfg), "serve"], env=env,
                            stdout=log, stderr=log)  # fmt: skip
    try:
        ready = manager.recv(4096).decode()
        assert ready == "READY=1", ready
        # READY means listening: the HTTP server answers at once
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5) as r:
            assert r.status == 200
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert manager.recv(4096).decode() == "STOPPING=1"
        assert proc.wait(30) == 0
        assert time.monotonic() - t0 < 20
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        manager.close()
        log.close()
