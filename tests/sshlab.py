"""A dropbear storage host's keys for interop tests: who logs in, and the pinned host key.

Owns the key material both SSH-host tests set up the same way (a client
ed25519 key authorized in a private home, a dropbear host key and its public
line to pin); how the dropbear runs (which namespace, which port) stays with
each test.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

TOOLS = ("dropbear", "dropbearkey", "ssh-keygen", "unshare")


@dataclass(frozen=True)
class HostKeys:
    home: Path  # bind-mounted over /root for dropbear: holds .ssh/authorized_keys
    client: Path  # the client's private key
    hostkey: Path  # dropbear's host key file
    host_key: str  # its public line, "ssh-ed25519 AAAA...", to pin


def need_tools(*extra: str) -> None:
    for tool in TOOLS + extra:
        if not shutil.which(tool):
            pytest.skip(reason=f"needs {tool} (apt-get install dropbear-bin openssh-client)")


def host_keys(work: Path) -> HostKeys:
    home = work / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    home.chmod(0o700)
    client = work / "client"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(client)], check=True)
    shutil.copy(f"{client}.pub", home / ".ssh" / "authorized_keys")
    (home / ".ssh" / "authorized_keys").chmod(0o600)
    hostkey = work / "hostkey"
    subprocess.run(["dropbearkey", "-t", "ed25519", "-f", str(hostkey)], check=True,
                   capture_output=True)  # fmt: skip
    shown = subprocess.run(["dropbearkey", "-y", "-f", str(hostkey)], check=True,
                           capture_output=True, text=True).stdout  # fmt: skip
    host_key = next(line for line in shown.splitlines() if line.startswith("ssh-ed25519 "))
    return HostKeys(home, client, hostkey, host_key)
