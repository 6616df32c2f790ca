"""Pickup deadline of agent commands: when a queued command has waited too long.

Owns the rule, pure (no database, no clock of its own): a command queued for
a machine's agent that the agent has not picked up (``queued``, not yet
``running``) within a bound is overdue; :func:`provisiond.agentjob.wait_command`
then fails it and its job, and the appliance and machine go ``failed`` with
the reason this module words (it names the machine, the command and the
bound). Without it a machine that never comes (dead, unplugged, booted into
something else) leaves its deploy, capture or erase job running for hours.

The bound (``[agent]``):

* ``pickup_timeout`` (default 300 s) — the agent was alive when the command
  was queued (heard within ``heartbeat_timeout``): it long-polls at least
  every 30 s, so five minutes without a pickup means it is gone;
* ``pickup_boot_timeout`` (default 900 s) — it was not (the machine is off
  and is being powered on, or has to be network-booted by hand): it has to
  boot into the agent first.

The clock runs from the later of the queueing and the end of the machine's
previous agent command, and not at all while another command of the machine
runs: the agent runs one command at a time and polls only when idle.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class Bounds:
    pickup: int = 300  # s: the agent was alive when the command was queued
    boot: int = 900  # s: it was not (it must boot into the agent first)
    heartbeat_timeout: int = 60  # s of silence after which an agent is not alive

    @classmethod
    def of(cls, agent_config) -> Bounds:
        return cls(agent_config.pickup_timeout, agent_config.pickup_boot_timeout,
                   agent_config.heartbeat_timeout)  # fmt: skip


@dataclass(frozen=True)
class Waiting:
    """What is known of one queued command and its machine."""

    machine: str
    command_id: int
    kind: str  # "deploy", "capture", ...
    queued_at: dt.datetime
    heard_at: dt.datetime | None = None  # the agent's last heartbeat (None: never)
    busy: bool = False  # another agent command of the machine is running
    free_since: dt.datetime | None = None  # when the machine's previous command ended


def limit(w: Waiting, b: Bounds) -> int:
    """The bound that applies: was the agent alive when the command was queued?"""
    alive = w.heard_at is not None and (
        (w.queued_at - w.heard_at).total_seconds() <= b.heartbeat_timeout
    )
    return b.pickup if alive else b.boot


def overdue(w: Waiting, now: dt.datetime, b: Bounds) -> str | None:
    """The failure reason when the command is overdue at ``now``, else None."""
    if w.busy:
        return None
    since = max(w.queued_at, w.free_since or w.queued_at)
    bound = limit(w, b)
    waited = (now - since).total_seconds()
    if waited < bound:
        return None
    heard = ("its agent was never heard" if w.heard_at is None
             else f"its agent was last heard {w.heard_at:%Y-%m-%d %H:%M:%S} UTC")  # fmt: skip
    which = "pickup_timeout" if bound == b.pickup else "pickup_boot_timeout"
    return (
        f"{w.machine} did not pick up its {w.kind} command {w.command_id} within {bound} s "
        f"({heard}; [agent] {which}): is it powered on and network-booting into the agent?"
    )
