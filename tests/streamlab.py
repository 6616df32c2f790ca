"""The daemon-and-agent lab of the local deploy / capture interop tests.

Owns :func:`agent_lab` and the ``lab`` fixture (the real daemon in a Lab namespace with a file
storage and a fake kernel, plus a factory for the real agent script on a
client whose disk is a regular file) and the small helpers the tests share:
the client's ``MAC``, ``MiB`` and :func:`job_of`. Used by
tests/interop/test_stream.py, test_capture_used.py and test_localboot.py.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.agentlab import BUSYBOX
from tests.daemonlab import LabDaemon, lab_config
from tests.hostagent import HostAgent
from tests.netlab import Lab

MAC = "52:54:00:5b:00:01"
MiB = 2**20


@contextlib.contextmanager
def agent_lab(tmp_path: Path, ns: str, mac: str, local: str):
    """The real daemon in a Lab namespace ``ns`` with a file storage, a fake kernel and the
    ``[local]`` settings ``local``; yields ``(lab, daemon, client, agent)`` where
    ``agent(disk_size)`` starts the real agent script for ``mac`` and waits for it to be idle."""
    if BUSYBOX is None or not shutil.which("curl"):
        pytest.skip(reason="needs busybox (busybox-static) and curl")
    with Lab(ns) as lab:
        extra = f'[[storage]]\nname = "local"\nbackend = "file"\npath = "{tmp_path / "images"}"\n'
        extra += f'[images]\nimport_dirs = ["{tmp_path}"]\n'
        extra += f"[local]\n{local}\n"
        d = LabDaemon(lab, tmp_path, lab_config(lab, tmp_path / "state", extra))
        d.cli("init")
        d.add_fake_kernel()
        d.start()
        client = lab.add_client(mac=mac, address=f"{lab.net}.50")
        agents: list[HostAgent] = []

        def agent(disk_size: int = 64 * MiB) -> HostAgent:
            agents.append(HostAgent(d, client, tmp_path, mac, disk_size))
            deadline = time.monotonic() + 30
            while d.cli_json("resource", "show", mac)["state"] != "idle":
                assert time.monotonic() < deadline, agents[-1].log()
                time.sleep(0.3)
            return agents[-1]

        try:
            yield lab, d, client, agent
        finally:
            for a in agents:
                a.stop()
            d.stop()


@pytest.fixture
def lab(tmp_path):
    # these tests are about the data path: active once written and verified (the boot
    # proof of a written disk is tests/interop/test_localboot.py)
    with agent_lab(tmp_path, "strm", MAC, "confirm_boot = false") as (lab, d, _client, agent):
        yield lab, d, agent


def job_of(out: str) -> int:
    return int(re.search(r"job (\d+)", out).group(1))


def image_sha256(d: LabDaemon, name: str, timeout: float = 60) -> str:
    """``image show NAME``'s sha256 once it is there (a capture's follows the ready image)."""
    deadline = time.monotonic() + timeout
    while True:
        shown = d.cli_json("image", "show", name)
        if shown.get("sha256") or time.monotonic() > deadline:
            return shown.get("sha256") or ""
        time.sleep(0.2)
