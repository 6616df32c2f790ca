"""IPMI power over the LAN: ``ipmitool -I lanplus`` (IPMI v2.0 RMCP+).

Owns the ipmitool command lines and the reading of their answers. The password
goes to ipmitool through the environment (``-E`` reads ``IPMI_PASSWORD``), never
on the command line where ``ps`` would show it. Cipher suite 3 (RAKP-HMAC-SHA1,
HMAC-SHA1-96 integrity, AES-CBC-128 confidentiality) is the default every IPMI
v2.0 BMC implements; ``options.cipher`` picks another (17 on newer BMCs).
``-v`` makes ipmitool say *why* a session failed, which is how a wrong password
(``RAKP 2 HMAC is invalid``) is told from an unreachable BMC
(``Get Auth Capabilities error``). ``options.port`` (default 623),
``options.privilege`` (default ADMINISTRATOR) and ``options.retries`` are passed
through. The run function is injectable so unit tests read canned answers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from provisiond.power import (
    BadCredentials,
    BmcUnreachable,
    NotSupported,
    PowerAction,
    PowerError,
    PowerSettings,
    PowerState,
    register,
)


@dataclass(frozen=True)
class Answer:
    rc: int
    stdout: str
    stderr: str


Run = Callable[[Sequence[str], dict[str, str], float], Answer]


def run_ipmitool(argv: Sequence[str], env: dict[str, str], timeout: float) -> Answer:
    try:
        p = subprocess.run(
            list(argv),
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise PowerError("ipmi: ipmitool is not installed (apt-get install ipmitool)") from None
    except subprocess.TimeoutExpired:
        return Answer(124, "", f"timed out after {timeout:.0f} s")
    return Answer(p.returncode, p.stdout, p.stderr)


# how ipmitool -v says a session failed -> which PowerError
_CREDENTIALS = (
    "RAKP 2 HMAC is invalid",
    "unauthorized name",
    "invalid authentication algorithm",  # the cipher suite is refused for this user
    "insufficient resources for session",
    "Activate Session error",
    "Invalid user name",
)
_UNREACHABLE = (
    "Get Auth Capabilities error",
    "Error issuing Get Channel Authentication Capabilities",
    "No response from remote controller",
    "timed out after",
    "Address lookup",
    "Name or service not known",
    "Connection refused",
)
_UNSUPPORTED = ("Invalid command", "Invalid data field", "not supported", "Unknown command")

_COMMAND = {PowerAction.ON: "on", PowerAction.OFF: "off", PowerAction.CYCLE: "cycle"}


def classify(answer: Answer, where: str, what: str) -> PowerError:
    """The PowerError an ipmitool failure means, with a message naming ``where`` and the fix."""
    text = (answer.stderr + "\n" + answer.stdout).strip()
    last = next(
        (ln.strip() for ln in reversed(text.splitlines()) if ln.strip() and "IANA" not in ln),
        f"exit code {answer.rc}",
    )
    reason = next(
        (ln.strip() for ln in text.splitlines() if any(k in ln for k in _CREDENTIALS)), None
    )
    if reason:
        return BadCredentials(
            f"ipmi {where}: the BMC refused the user name or password ({reason}); "
            "set them again with `provisiond resource set-power`"
        )
    if any(k in text for k in _UNREACHABLE):
        return BmcUnreachable(
            f"ipmi {where}: the BMC does not answer ({last}); check the address, that "
            "IPMI over LAN is enabled on the BMC and that UDP 623 is open"
        )
    if any(k in text for k in _UNSUPPORTED):
        return NotSupported(f"ipmi {where}: the BMC does not support {what} ({last})")
    return PowerError(f"ipmi {where}: {what} failed ({last})")


class IpmiDriver:
    def __init__(self, settings: PowerSettings, run: Run = run_ipmitool) -> None:
        if not settings.address:
            raise PowerError("ipmi: no BMC address; set one with `resource set-power --address`")
        self.settings, self.run = settings, run
        opts = settings.options
        self.port = int(opts.get("port", 623))
        self.where = settings.address if self.port == 623 else f"{settings.address}:{self.port}"
        self.argv = [
            shutil.which("ipmitool") or "ipmitool",
            "-I",
            "lanplus",
            "-H",
            settings.address,
            "-p",
            str(self.port),
            "-U",
            settings.user,
            "-E",  # password from $IPMI_PASSWORD, not argv
            "-C",
            str(int(opts.get("cipher", 3))),
            "-L",
            str(opts.get("privilege", "ADMINISTRATOR")),
            "-N",
            str(max(1, int(settings.timeout // 4))),
            "-R",
            str(int(opts.get("retries", 2))),
            "-v",
        ]

    def _chassis(self, *args: str) -> str:
        what = "chassis " + " ".join(args)
        answer = self.run(
            [*self.argv, "chassis", *args],
            {"IPMI_PASSWORD": self.settings.password},
            self.settings.timeout,
        )
        if answer.rc != 0:
            raise classify(answer, self.where, what)
        return answer.stdout

    def status(self) -> PowerState:
        out = self._chassis("power", "status")
        for line in out.splitlines():
            if line.startswith("Chassis Power is "):
                word = line.rsplit(" ", 1)[-1].strip().lower()
                return PowerState.ON if word == "on" else PowerState.OFF
        raise PowerError(f"ipmi {self.where}: unexpected answer to power status: {out.strip()!r}")

    def act(self, action: PowerAction) -> None:
        if action not in _COMMAND:
            raise NotSupported(f"ipmi {self.where}: {action} is not a power action")
        if action == PowerAction.CYCLE and self.status() == PowerState.OFF:
            action = PowerAction.ON  # many BMCs refuse to cycle a machine that is off
        self._chassis("power", _COMMAND[action])


@register("ipmi")
def _factory(settings: PowerSettings) -> IpmiDriver:
    return IpmiDriver(settings)
