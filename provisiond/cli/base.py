"""CLI plumbing: the top-level click group, configuration loading, output, errors.

The command line owns argument parsing and presentation only: tables for people, ``--json``
for scripts. Every command loads the configuration once (``--config``, then
``$PROVISIOND_CONFIG``, then the default path) and calls the service modules;
errors are printed as one line naming the object and what to do, with exit
code 1 (2 for usage errors, as click does).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import click

from provisiond import config as configmod
from provisiond import jobs
from provisiond.db import Database
from provisiond.errors import ProvisiondError
from provisiond.lifecycle import IllegalTransition
from provisiond.lifecycle import JobState as JS

ACTOR = f"cli:{os.environ.get('SUDO_USER') or os.environ.get('USER') or 'root'}"


# ---------------------------------------------------------------------------
# plumbing


class Env:
    def __init__(self, config_flag: str | None) -> None:
        self._flag = config_flag
        self._config: configmod.Config | None = None
        self._db: Database | None = None

    @property
    def config(self) -> configmod.Config:
        if self._config is None:
            self._config = configmod.load(configmod.resolve_path(self._flag))
        return self._config

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.config.database_url)
        return self._db


def handle_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ProvisiondError, configmod.ConfigError, IllegalTransition) as exc:
            raise click.ClickException(str(exc))

    return wrapper


def table(rows: Iterable[dict[str, Any]], columns: list[str]) -> str:
    rows = list(rows)
    if not rows:
        return "(none)"
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*(c.upper() for c in columns)), *(fmt.format(*row) for row in cells)]
    return "\n".join(line.rstrip() for line in lines)


def emit(as_json: bool, data: Any, columns: list[str] | None = None) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    elif isinstance(data, list):
        click.echo(table(data, columns or (list(data[0]) if data else [])))
    else:
        width = max(len(k) for k in data) if data else 0
        for key, value in data.items():
            if isinstance(value, dict | list):
                value = json.dumps(value, default=str)
            click.echo(f"{key:<{width}}  {value}")


class ProgressBar:
    """Bytes done, MB/s and ETA on one terminal line (plain lines when not a tty)."""

    def __init__(self, label: str) -> None:
        self.label, self.t0, self._last = label, time.monotonic(), 0.0
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < (0.2 if self.tty else 5.0) and done < total:
            return
        self._last = now
        rate = done / max(now - self.t0, 1e-6)
        pct = 100.0 * done / total if total else 0.0
        eta = (total - done) / rate if rate and total else 0.0
        line = (f"{self.label}: {done / 2**20:8.1f}/{total / 2**20:.1f} MiB {pct:5.1f}% "
                f"{rate / 1e6:6.1f} MB/s ETA {eta:4.0f} s")  # fmt: skip
        click.echo(("\r" + line) if self.tty else line, err=True, nl=not self.tty)

    def done(self) -> None:
        if self.tty:
            click.echo("", err=True)


json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


@click.group()
@click.option("--config", "config_flag", envvar=None, help="path to provisiond.toml")
@click.pass_context
def main(ctx: click.Context, config_flag: str | None) -> None:
    """provisiond: network-boot, register and deploy bare-metal machines."""
    ctx.obj = Env(config_flag)


def wait_job(env: Env, job_id: int, timeout: float = 3600) -> None:
    """Follow a job's log and progress until it ends; exit 1 if it failed."""
    shown, deadline = 0, time.monotonic() + timeout
    bar = ProgressBar(f"job {job_id}")
    while time.monotonic() < deadline:
        with env.db.transaction() as s:
            job = jobs.get(s, job_id)
            lines = job.log.splitlines()
            state, outcome = job.state, job.outcome
            done, total = job.bytes_done, job.bytes_total
        for line in lines[shown:]:
            click.echo(f"  {line}")
        shown = len(lines)
        if total and state == JS.RUNNING:
            bar(done, total)
        if state in (JS.SUCCEEDED, JS.FAILED, JS.CANCELLED):
            bar.done() if total else None
            if state != JS.SUCCEEDED:
                raise click.ClickException(f"job {job_id} {state}: {outcome}")
            return
        time.sleep(0.5)
    raise click.ClickException(f"job {job_id} still running after {timeout:.0f} s")


wait_option = click.option("--wait", is_flag=True, help="follow the job until it ends")
