"""Resources: discovery, registration, heartbeats and state changes.

Owns every change to a :class:`provisiond.model.Resource`. State moves go
through :func:`set_state`, which consults :mod:`provisiond.lifecycle` and
writes an audit event. Lookups accept what an operator types: a name, the
``r-<mac>`` default name, a MAC in any common spelling, an IP or an id.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from provisiond import events, lifecycle
from provisiond.boot import normalize_mac
from provisiond.errors import Conflict, Invalid, NotFound
from provisiond.lifecycle import ResourceState as RS
from provisiond.model import Appliance, Job, Resource, utcnow
from provisiond.security import ssh_fingerprint

#: states in which a resource runs the agent and its per-boot token is valid
AGENT_STATES = frozenset({RS.NEW, RS.IDLE, RS.OFFLINE, RS.FAILED, RS.DEPLOYING, RS.RELEASING})


def find(session: Session, ref: str) -> Resource:
    ref = ref.strip()
    conds = [Resource.name == ref, Resource.ip == ref]
    if ref.isdigit():
        conds.append(Resource.id == int(ref))
    try:
        conds.append(Resource.mac == normalize_mac(ref[2:] if ref.startswith("r-") else ref))
    except ValueError:
        pass
    res = session.scalars(select(Resource).where(or_(*conds))).first()
    if res is None:
        raise NotFound(
            f"resource '{ref}' not found (by name, MAC, IP or id); see `provisiond resource list`"
        )
    return res


def ensure(session: Session, mac: str, actor: str = "daemon") -> Resource:
    """The resource for ``mac``, created in state ``new`` on first sight."""
    mac = normalize_mac(mac)
    res = session.scalars(select(Resource).where(Resource.mac == mac)).first()
    if res is None:
        res = Resource(mac=mac, macs=[mac], state=RS.NEW, inventory={})
        session.add(res)
        session.flush()
        events.record(session, actor, "resource.discovered", res.display_name, f"mac {mac}")
    return res


def set_state(
    session: Session, res: Resource, target: RS, reason: str = "", actor: str = "daemon"
) -> None:
    if res.state == target and not reason:
        return
    lifecycle.check(res.state, target)
    before = res.state
    res.state, res.state_reason = str(target), reason
    if target not in AGENT_STATES:
        res.agent_token_hash = None  # the per-boot token dies with the agent states
    events.record(
        session, actor, "resource.state", res.display_name,
        f"{before} -> {target}" + (f": {reason}" if reason else ""),
    )  # fmt: skip


def register(
    session: Session, res: Resource, body: dict[str, Any], actor: str = "agent"
) -> Resource:
    """Apply an agent's registration: inventory, address, pinned host key."""
    try:
        mac = normalize_mac(str(body.get("mac", "")))
    except ValueError:
        raise Invalid("register: 'mac' must be the boot NIC's MAC address", field="mac")
    if mac != res.mac:
        raise Invalid(f"register: token belongs to {res.mac}, not {mac}", field="mac")
    ip = body.get("ip")
    if ip is not None:
        try:
            ip = str(ipaddress.IPv4Address(ip))
        except ValueError:
            raise Invalid(f"register: 'ip' {ip!r} is not an IPv4 address", field="ip")
    hostkey = str(body.get("hostkey", "")).strip()
    try:
        fingerprint = ssh_fingerprint(hostkey)
    except ValueError:
        raise Invalid("register: 'hostkey' must be an 'ssh-ed25519 AAAA...' line", field="hostkey")
    inventory = body.get("inventory")
    if not isinstance(inventory, dict):
        raise Invalid("register: 'inventory' must be a JSON object", field="inventory")
    if ip and ip != res.ip:
        _release_ip(session, res, ip)
    res.ip = ip
    res.inventory = inventory
    res.hostkey, res.hostkey_fingerprint = hostkey, fingerprint
    res.last_heartbeat = utcnow()
    res.macs = sorted({mac, *(_nic_macs(inventory))})
    if res.state in (RS.NEW, RS.OFFLINE, RS.FAILED, RS.IDLE, RS.RELEASING) and not _busy(
        session, res
    ):
        set_state(session, res, RS.IDLE, actor=actor)
    events.record(session, actor, "resource.registered", res.display_name, f"ip {ip} {fingerprint}")
    return res


def _release_ip(session: Session, res: Resource, ip: str) -> None:
    """An address moved to ``res``: forget it on any other resource."""
    for other in session.scalars(select(Resource).where(Resource.ip == ip, Resource.id != res.id)):
        other.ip = None


def _nic_macs(inventory: dict[str, Any]) -> list[str]:
    out = []
    for nic in inventory.get("nics", []) or []:
        try:
            out.append(normalize_mac(str(nic.get("mac", ""))))
        except (ValueError, AttributeError):
            continue
    return out


def _busy(session: Session, res: Resource) -> bool:
    """True when an appliance owns the machine (registration must not idle it)."""
    return (
        session.scalars(
            select(Appliance.id).where(
                Appliance.resource_id == res.id, Appliance.state.in_(("starting", "active"))
            )
        ).first()
        is not None
    )


def heartbeat(session: Session, res: Resource) -> None:
    res.last_heartbeat = utcnow()
    if res.state == RS.OFFLINE:
        set_state(session, res, RS.IDLE, "heartbeat resumed", actor="agent")


def mark_stale_offline(session: Session, timeout_s: int) -> list[Resource]:
    cutoff = utcnow() - dt.timedelta(seconds=timeout_s)
    stale = session.scalars(
        select(Resource).where(Resource.state == RS.IDLE, Resource.last_heartbeat < cutoff)
    ).all()
    for res in stale:
        set_state(session, res, RS.OFFLINE, f"no heartbeat for {timeout_s} s")
    return list(stale)


def delete(session: Session, res: Resource, actor: str) -> None:
    if session.scalars(select(Appliance.id).where(Appliance.resource_id == res.id)).first():
        raise Conflict(
            f"resource {res.display_name} is part of an appliance; "
            "remove it first with `provisiond appliance rm`"
        )
    events.record(session, actor, "resource.removed", res.display_name, f"mac {res.mac}")
    for job in session.scalars(select(Job).where(Job.resource_id == res.id)):
        job.resource_id = None
    session.delete(res)
