"""The one place in ``storage`` that runs subprocesses.

``Runner.run(argv)`` runs a command to completion and returns ``Result`` or
raises ``CommandFailed``; ``Runner.start(argv)`` starts a long-lived daemon
(tgtd). An argv element wrapped in ``Secret`` is passed to the program as is
but shown as ``***`` in logs and exception messages, so CHAP secrets never
reach a log. ``FakeRunner`` scripts responses for unit tests and records calls.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger("provisiond.storage")  # under the daemon's handler and redaction

MASK = "***"


class Secret(str):
    """A command-line argument that must never be logged (e.g. a CHAP secret)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"


Arg = str | Secret


def redact(argv: Sequence[str]) -> list[str]:
    """``argv`` with every ``Secret`` element replaced by ``***``."""
    return [MASK if isinstance(a, Secret) else str(a) for a in argv]


def _scrub(text: str, argv: Sequence[str]) -> str:
    for a in argv:
        if isinstance(a, Secret) and a:
            text = text.replace(str(a), MASK)
    return text


def show(argv: Sequence[str]) -> str:
    """A shell-quoted, redacted rendering of ``argv`` for logs."""
    return shlex.join(redact(argv))


@dataclass(frozen=True)
class Result:
    rc: int
    stdout: str
    stderr: str


class CommandFailed(Exception):
    """A command exited non-zero (or timed out: rc = -1). Secrets are redacted."""

    def __init__(self, argv: Sequence[str], rc: int, stderr: str) -> None:
        self.argv = redact(argv)
        self.rc = rc
        self.stderr = _scrub(stderr, argv).strip()
        super().__init__(f"{shlex.join(self.argv)} failed (rc={rc}): {self.stderr}")


class Runner:
    """Runs commands with a timeout; logs them with secrets redacted."""

    def run(
        self,
        argv: Sequence[Arg],
        *,
        input: str | None = None,
        timeout: float = 120.0,
        check: bool = True,
    ) -> Result:
        log.debug("run: %s", show(argv))
        args = [str(a) for a in argv]
        try:
            p = subprocess.run(
                args, input=input, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise CommandFailed(argv, -1, f"timed out after {timeout} s")
        except OSError as e:
            raise CommandFailed(argv, 127, str(e))
        res = Result(p.returncode, p.stdout, p.stderr)
        if check and p.returncode != 0:
            raise CommandFailed(argv, p.returncode, p.stderr)
        return res

    def start(self, argv: Sequence[Arg], *, log_path: str | None = None) -> subprocess.Popen:
        """Start a long-lived process; stdout+stderr go to ``log_path`` (or /dev/null)."""
        log.info("start: %s", show(argv))
        out = open(log_path or "/dev/null", "ab")  # noqa: SIM115 - owned by the child
        try:
            return subprocess.Popen(
                [str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        finally:
            out.close()


Responder = Callable[[list[str]], Result | None]


@dataclass
class FakeRunner(Runner):
    """Scripted runner for unit tests.

    ``responses`` maps an argv prefix (tuple) to a ``Result``, a list of
    results (consumed in order), or a callable ``argv -> Result``; the longest
    matching prefix wins. Unmatched commands succeed with empty output unless
    ``strict``. ``calls`` records every argv (as plain strings).
    """

    responses: dict[tuple[str, ...], object] = field(default_factory=dict)
    strict: bool = False
    calls: list[list[str]] = field(default_factory=list)
    logged: list[str] = field(default_factory=list)

    def on(self, prefix: Sequence[str], *results: Result | str | Responder) -> FakeRunner:
        items = [Result(0, r, "") if isinstance(r, str) else r for r in results]
        self.responses[tuple(prefix)] = items if len(items) != 1 else items[0]
        return self

    def _lookup(self, args: list[str]) -> Result | None:
        best = None
        for prefix in self.responses:
            if tuple(args[: len(prefix)]) == prefix and (best is None or len(prefix) > len(best)):
                best = prefix
        if best is None:
            return None
        r = self.responses[best]
        if isinstance(r, list):
            r = r.pop(0) if len(r) > 1 else r[0]
        return r(args) if callable(r) else r

    def run(self, argv, *, input=None, timeout=120.0, check=True) -> Result:
        args = [str(a) for a in argv]
        self.calls.append(args)
        self.logged.append(show(argv))
        res = self._lookup(args)
        if res is None:
            if self.strict:
                raise AssertionError(f"unexpected command: {show(argv)}")
            res = Result(0, "", "")
        if check and res.rc != 0:
            raise CommandFailed(argv, res.rc, res.stderr)
        return res

    def start(self, argv, *, log_path=None):
        self.calls.append([str(a) for a in argv])
        self.logged.append(show(argv))
        return None
