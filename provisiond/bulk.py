"""Bulk actions: one action on many resources at once (power, release, assign).

Owns the rules the API and UI share for "select several resources, then ...":
the action must be known and its arguments present, every named resource must
exist (an unknown one refuses the whole request: nothing is changed), at most
:data:`MAX` resources per request. Each resource is then handled in its own unit of
work, so one machine's failure (a BMC that does not answer, a resource that
already has an appliance) does not undo the others; the result lists every
resource with what happened to it. Power actions run ``[power] concurrency`` at
a time. Assigning one image to two or more machines in ``local`` mode marks
their start jobs as one fan-out group: they receive the image together over
multicast (:mod:`provisiond.fanout`). The action's fan-out settings
(:class:`FanoutSettings`: transport ``auto``/``mcast``/``unicast``, the
sender's max wait for late machines, its rate) are checked here and travel in
the group's mark to the fan-out session.
"""

from __future__ import annotations

import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from provisiond import appliances, powerctl, release, resources
from provisiond.config import Config
from provisiond.db import Database
from provisiond.errors import Invalid, NotFound, ProvisiondError
from provisiond.lifecycle import IllegalTransition
from provisiond.model import Resource
from provisiond.power import PowerError

ACTIONS = ("on", "off", "cycle", "release", "assign")
MAX = 1000
TRANSPORTS = ("auto", "mcast", "unicast")
MAX_WAIT = (1, 3600)  # s the sender waits for machines that have not joined
RATE = re.compile(r"([0-9]{1,6})([kmg]?)")  # bits/s, udp-sender's --max-bitrate (+ g)
RATE_BOUNDS = (1_000_000, 100_000_000_000)  # 1 Mbit/s .. 100 Gbit/s


@dataclass(frozen=True)
class FanoutSettings:
    """How "assign one image to many" sends the image (local mode, two or more machines).

    ``auto``: one multicast group (unicast when there is one machine or another mode);
    ``mcast``: the same, but refused unless it applies; ``unicast``: every machine its
    own HTTP streams. ``max_wait``/``rate``: ``fanout_max_wait``/``fanout_bitrate`` of
    :mod:`provisiond.fanout` for this group (None/"": the appliance's or the default).
    """

    transport: str = "auto"
    max_wait: int | None = None
    rate: str = ""  # udp-sender --max-bitrate: "100m", "500k"

    @classmethod
    def parse(cls, raw: dict | None) -> FanoutSettings:
        """From the API's ``fanout`` object or the form's fields; Invalid naming the field."""
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise Invalid("fanout: give an object {transport, max_wait, rate}", field="fanout")
        unknown = sorted(set(raw) - {"transport", "max_wait", "rate"})
        if unknown:
            raise Invalid(f"fanout: unknown settings {', '.join(unknown)} "
                          "(known: transport, max_wait, rate)", field="fanout")  # fmt: skip
        transport = raw.get("transport") or "auto"
        if transport not in TRANSPORTS:
            raise Invalid(f"fanout transport {transport!r}: use one of {', '.join(TRANSPORTS)}",
                          field="fanout.transport")  # fmt: skip
        return cls(transport, _max_wait(raw.get("max_wait")), _rate(raw.get("rate")))

    def mark(self, group: str, size: int) -> dict:
        """The ``fanout`` job parameter of the group's start jobs."""
        out: dict = {"group": group, "size": size}
        if self.max_wait is not None:
            out["max_wait"] = self.max_wait
        if self.rate:
            out["rate"] = self.rate
        return out


def _max_wait(value) -> int | None:
    if value is None or value == "":
        return None
    lo, hi = MAX_WAIT
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise Invalid(f"fanout max_wait {value!r}: whole seconds from {lo} to {hi}",
                      field="fanout.max_wait")  # fmt: skip
    return value


def _rate(value) -> str:
    if value is None or value == "":
        return ""
    m = RATE.fullmatch(str(value).strip().lower()) if isinstance(value, str) else None
    bits = int(m.group(1)) * {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}[m.group(2)] if m else 0
    lo, hi = RATE_BOUNDS
    if not lo <= bits <= hi:
        raise Invalid(f"fanout rate {value!r}: bits per second with k, m or g, from 1m to 100g "
                      "(e.g. 100m, 1g)", field="fanout.rate")  # fmt: skip
    # udp-sender knows k and m only
    return f"{bits // 10**6}m" if bits % 10**6 == 0 else f"{bits // 10**3}k"


@dataclass(frozen=True)
class Item:
    resource: str
    ok: bool
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


def resolve(db: Database, refs: list[str]) -> list[tuple[int, str]]:
    """(id, name) of every ref, in order, without duplicates; Invalid naming the unknown ones."""
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise Invalid("resources: give a non-empty list of resource names", field="resources")
    if len(refs) > MAX:
        raise Invalid(f"resources: at most {MAX} per request", field="resources")
    found, missing = [], []
    with db.reader() as s:
        for ref in dict.fromkeys(refs):
            try:
                r = resources.find(s, ref)
            except ProvisiondError:
                missing.append(ref)
                continue
            if r.id not in {i for i, _ in found}:
                found.append((r.id, r.display_name))
    if missing:
        raise Invalid(f"unknown resources: {', '.join(missing)}; nothing was changed",
                      field="resources")  # fmt: skip
    return found


def run(config: Config, db: Database, refs: list[str], action: str, *, erase: str | None = None,
        mode: str | None = None, image: str | None = None, kernel: str | None = None,
        actor: str = "cli", fanout: dict | None = None) -> list[Item]:  # fmt: skip
    if action not in ACTIONS:
        raise Invalid(f"action {action!r}: use one of {', '.join(ACTIONS)}", field="action")
    fan = FanoutSettings.parse(fanout)
    if fanout and action != "assign":
        raise Invalid("fanout: settings for action assign only", field="fanout")
    if action == "assign" and not mode:
        raise Invalid("assign needs a mode (sanboot, local or template)", field="mode")
    if erase not in (None, "", "quick", "full"):
        raise Invalid("erase: quick or full", field="erase")
    targets = resolve(db, refs)
    groupable = action == "assign" and mode == "local" and bool(image) and len(targets) >= 2
    if fan.transport == "mcast" and not groupable:
        raise Invalid(
            "fanout transport mcast: needs action assign, mode local, an image and at least "
            "two resources; nothing was changed", field="fanout.transport",
        )  # fmt: skip
    if action in ("on", "off", "cycle"):
        workers = max(1, min(config.power.concurrency, len(targets)))
        with ThreadPoolExecutor(workers, thread_name_prefix="bulk") as pool:
            return list(pool.map(lambda t: _power(config, db, t, action, actor), targets))
    one = _release if action == "release" else _assign
    # one image to several local-mode machines: their deploys share one multicast (fanout.py)
    mark = None
    if groupable and fan.transport != "unicast":
        mark = fan.mark(f"bulk-{uuid.uuid4().hex[:10]}", len(targets))
    return [one(db, t, actor, erase=erase or None, mode=mode, image=image, kernel=kernel,
                fanout=mark) for t in targets]  # fmt: skip


def _power(config, db, target, action, actor) -> Item:
    rid, name = target
    try:
        out = powerctl.act(config, db, rid, action, actor)
    except (PowerError, ProvisiondError) as exc:
        return Item(name, False, str(exc))
    return Item(name, True, f"power {action} done {out.detail}")


def _get(session, rid: int) -> Resource:
    res = session.get(Resource, rid)
    if res is None:
        raise NotFound(f"resource {rid} was removed meanwhile")
    return res


def _release(db, target, actor, *, erase, **_) -> Item:
    rid, name = target
    try:
        with db.transaction() as s:
            job = release.release(s, _get(s, rid), erase, actor)
            job_id = job.id if job else None
    except (ProvisiondError, IllegalTransition) as exc:
        return Item(name, False, str(exc))
    return Item(name, True, f"erasing ({erase}), job {job_id}" if job_id else "idle")


def _assign(db, target, actor, *, mode, image, kernel, fanout=None, **_) -> Item:
    rid, name = target
    try:
        with db.transaction() as s:
            res = _get(s, rid)
            app = appliances.create(s, name=f"app-{name}", resource=res, mode=mode,
                                    image=image, kernel=kernel, actor=actor)  # fmt: skip
            job = appliances.start(s, app, actor)
            if fanout:
                job.params = {**(job.params or {}), "fanout": fanout}
            app_name, job_id = app.name, job.id
    except (ProvisiondError, IllegalTransition) as exc:
        return Item(name, False, str(exc))
    return Item(name, True, f"appliance {app_name} starting (job {job_id})")
