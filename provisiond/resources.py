"""Resources: discovery, registration, heartbeats and state changes.

Owns every change to a :class:`provisiond.model.Resource`. State moves go
through :func:`set_state`, which consults :mod:`provisiond.lifecycle` and
writes an audit event. Lookups accept what an operator types: a name, the
``r-<mac>`` default name, a MAC in any common spelling, an IP or an id.

Registration trusts the network only as far as the boot did: the address
recorded is the request's source (a claimed ``ip`` that differs is ignored),
and a host key other than the pinned one is never accepted silently — the
resource goes to ``key-changed`` and nothing connects to it until an
operator runs :func:`accept_key` (the ``known_hosts`` model). With
``agent.hostkey_pinning = "boot"`` (the default: the initrd makes a new key
every boot) a new boot's token clears the pin (:func:`new_boot`), so the
first registration of each boot pins its key; with ``"resource"`` the key
is pinned for the machine's life.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from provisiond import events, lifecycle
from provisiond.errors import Conflict, Invalid, NotFound
from provisiond.hardware import parse_inventory
from provisiond.lifecycle import ApplianceState as AS
from provisiond.lifecycle import ResourceState as RS
from provisiond.model import Appliance, Job, Resource, utcnow
from provisiond.security import hash_token, new_token, ssh_fingerprint
from pxe.boot import normalize_mac

#: states in which a resource runs the agent and its per-boot token is valid
AGENT_STATES = frozenset(
    {RS.NEW, RS.IDLE, RS.OFFLINE, RS.FAILED, RS.DEPLOYING, RS.RELEASING, RS.KEY_CHANGED}
)


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


#: a resource name: a DNS label (DNS answers for it, :mod:`provisiond.inventory`)
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def rename(session: Session, res: Resource, name: Any, actor: str) -> None:
    """Give ``res`` an operator's name: a DNS label no other resource has."""
    if not isinstance(name, str) or not NAME.match(name):
        raise Invalid("name: lower-case letters, digits and '-' (a DNS label)", field="name")
    other = session.scalars(select(Resource.id).where(Resource.name == name)).first()
    if other is not None and other != res.id:
        raise Conflict(f"another resource is already named '{name}'", field="name")
    events.record(session, actor, "resource.renamed", res.display_name, f"-> {name}")
    res.name = name


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


def new_boot(session: Session, res: Resource, token_hash: str, pinning: str) -> None:
    """A DHCP-verified boot got its agent token; ``pinning="boot"`` clears the pinned key."""
    res.agent_token_hash = token_hash
    if pinning == "boot" and res.state != RS.KEY_CHANGED:
        res.hostkey = res.hostkey_fingerprint = None


def enroll(session: Session, mac: str, pinning: str, actor: str) -> tuple[Resource, str]:
    """An operator's explicit enrolment: a new agent token for ``mac``, shown once.

    For a machine that cannot PXE-boot through provisiond (booted from media,
    or a harness on loopback). It replaces the current token, like a boot.
    """
    token = new_token()
    res = ensure(session, mac, actor=actor)
    new_boot(session, res, hash_token(token), pinning)
    events.record(session, actor, "resource.enrolled", res.display_name, "agent token issued")
    return res, token


def register(
    session: Session,
    res: Resource,
    body: dict[str, Any],
    source_ip: str | None,
    actor: str = "agent",
) -> Resource:
    """Apply an agent's registration: inventory, address (the source), pinned host key."""
    try:
        mac = normalize_mac(str(body.get("mac", "")))
    except ValueError:
        raise Invalid("register: 'mac' must be the boot NIC's MAC address", field="mac")
    if mac != res.mac:
        raise Invalid(f"register: token belongs to {res.mac}, not {mac}", field="mac")
    ip = _source_ip(session, res, body.get("ip"), source_ip, actor)
    hostkey = str(body.get("hostkey", "")).strip()
    try:
        fingerprint = ssh_fingerprint(hostkey)
    except ValueError:
        raise Invalid("register: 'hostkey' must be an 'ssh-ed25519 AAAA...' line", field="hostkey")
    inventory = parse_inventory(body.get("inventory"))
    if res.hostkey and hostkey != res.hostkey and res.state != RS.NEW:
        return _key_changed(session, res, hostkey, fingerprint, ip, actor)
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


def _source_ip(
    session: Session, res: Resource, claimed: Any, source_ip: str | None, actor: str
) -> str | None:
    """The registered address is where the request came from; a different claim is ignored."""
    try:
        ip = str(ipaddress.IPv4Address(source_ip)) if source_ip else None
    except ValueError:
        ip = None  # an IPv6 or unix-socket peer: no IPv4 address to record
    if claimed not in (None, "", ip):
        detail = f"agent claimed ip {str(claimed)[:64]!r}, request came from {ip}"
        events.record(session, actor, "resource.ip-ignored", res.display_name, detail)
    return ip


def _key_changed(
    session: Session, res: Resource, hostkey: str, fingerprint: str, ip: str | None, actor: str
) -> Resource:
    """Another key than the pinned one: hold it for the operator, connect to nothing."""
    res.hostkey_pending, res.ip_pending = hostkey, ip
    reason = (
        f"agent at {ip} presented host key {fingerprint}, pinned is {res.hostkey_fingerprint}; "
        f"if the machine really changed run `provisiond resource accept-key {res.display_name}`"
    )
    set_state(session, res, RS.KEY_CHANGED, reason, actor=actor)
    events.record(session, actor, "resource.key-changed", res.display_name, reason)
    return res


def accept_key(session: Session, res: Resource, actor: str) -> Resource:
    """The operator trusts the key a ``key-changed`` resource offered (and its address)."""
    if res.state != RS.KEY_CHANGED or not res.hostkey_pending:
        raise Conflict(
            f"resource {res.display_name} is {res.state}, not key-changed: no host key to accept"
        )
    before = res.hostkey_fingerprint
    res.hostkey = res.hostkey_pending
    res.hostkey_fingerprint = ssh_fingerprint(res.hostkey)
    if res.ip_pending and res.ip_pending != res.ip:
        _release_ip(session, res, res.ip_pending)
        res.ip = res.ip_pending
    res.hostkey_pending = res.ip_pending = None
    set_state(session, res, RS.IDLE, f"host key {res.hostkey_fingerprint} accepted", actor=actor)
    events.record(session, actor, "resource.key-accepted", res.display_name,
                  f"{before} -> {res.hostkey_fingerprint}")  # fmt: skip
    return res


def remote_target(res: Resource) -> tuple[str, str, str]:
    """(name, ip, pinned key) for SSH to ``res``; refused unless its key is trusted."""
    if res.state == RS.KEY_CHANGED:
        raise Conflict(
            f"resource {res.display_name} presented a new host key ({res.state_reason}); "
            f"nothing connects to it until `provisiond resource accept-key {res.display_name}`"
        )
    if not res.ip:
        raise Conflict(f"resource {res.display_name} has no known IP address yet")
    return res.display_name, res.ip, res.hostkey or ""


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
                Appliance.resource_id == res.id, Appliance.state.in_((AS.STARTING, AS.ACTIVE))
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
    stale = session.scalars(  # SKIP LOCKED: racks sweeping at once never both take one row
        select(Resource)
        .where(Resource.state == RS.IDLE, Resource.last_heartbeat < cutoff)
        .with_for_update(skip_locked=True)
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
