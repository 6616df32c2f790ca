"""How inventory objects look to the CLI, the API and the UI: plain dicts, no secrets.

Owns the one JSON shape of each noun, so ``provisiond ... --json``, the API,
the UI and the tests agree. Agent token hashes, password hashes and CHAP
secrets are never part of a shape.
"""

from __future__ import annotations

from typing import Any

from provisiond.model import Appliance, Event, Image, Job, Kernel, Resource, Storage


def iso(value) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def _int(value: Any) -> int | None:
    """A stored number, or None: rows written before the inventory schema may hold anything."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def resource(r: Resource, detail: bool = False) -> dict[str, Any]:
    inv = r.inventory if isinstance(r.inventory, dict) else {}
    cpu = inv.get("cpu")
    out = {
        "id": r.id,
        "name": r.display_name,
        "mac": r.mac,
        "ip": r.ip,
        "state": r.state,
        "state_reason": r.state_reason,
        "cpus": _int(cpu.get("count")) if isinstance(cpu, dict) else None,
        "memory_mib": (_int(inv.get("memory_bytes")) or 0) // 2**20 or None,
        "last_heartbeat": iso(r.last_heartbeat),
        "power_state": r.power_state if r.power_driver else None,
        "rack": r.owner,  # the instance that reaches the machine (provisiond.racks)
        "ha_pool": r.ha_pool,
    }
    if detail:
        out["power"] = _power(r)
        out.update(
            macs=r.macs,
            reserved_ip=r.reserved_ip,
            hostkey_fingerprint=r.hostkey_fingerprint,
            inventory=inv,
            created_at=iso(r.created_at),
        )
    return out


def image(i: Image) -> dict[str, Any]:
    return {
        "id": i.id,
        "name": i.name,
        "os": i.os,
        "format": i.format,
        "size": i.size,
        "sha256": i.sha256,
        "state": i.state,
        "volume_id": i.volume_id,
        "created_at": iso(i.created_at),
    }


def kernel(k: Kernel) -> dict[str, Any]:
    return {
        "id": k.id,
        "name": k.name,
        "version": k.version,
        "kernel_path": k.kernel_path,
        "initrd_path": k.initrd_path,
        "cmdline": k.cmdline,
        "is_default": k.is_default,
    }


def storage(st: Storage) -> dict[str, Any]:
    return {
        "id": st.id,
        "name": st.name,
        "backend": st.backend,
        "path": st.path,
        "exporter": st.exporter,
        "host": st.host,  # a storage host (driven over SSH), or None: this machine
        "host_state": st.host_state,  # "up" | "down" (its appliances cannot start) | None
        "host_reason": st.host_reason,  # why it is down
    }


def declared_storage(d) -> dict[str, Any]:
    """A :class:`provisiond.storages.Declared`: the declaration, with its row's id and state."""
    st, row = d.config, d.row
    src = st if st is not None else row
    return {
        "id": row.id if row is not None else None,
        "name": d.name,
        "backend": src.backend,
        "path": src.path,
        "exporter": src.exporter,
        "host": (st.host if st is not None else row.host) or None,
        "host_state": row.host_state if row is not None else None,
        "host_reason": row.host_reason if row is not None else None,
        "declared": st is not None,
    }


def event(e: Event) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": iso(e.at),
        "actor": e.actor,
        "action": e.action,
        "target": e.target,
        "detail": e.detail,
    }


def job(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "state": job.state,
        "resource_id": job.resource_id,
        "appliance_id": job.appliance_id,
        "bytes_done": job.bytes_done,
        "bytes_total": job.bytes_total,
        "percent": round(job.percent, 1),
        "rate": job.rate,
        "eta_seconds": job.eta_seconds,
        "outcome": job.outcome,
        "owner": job.owner,  # the instance (rack) that runs or ran it
        "params": job.params,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


# Appliance parameters that carry secrets never leave through the API, UI or CLI: a SAN
# boot's CHAP secret, passwords (Windows unattend), and the installer command line, which
# holds the one-time answer-file URL (root password hash, SSH keys).
HIDDEN_WORDS, HIDDEN_KEYS = ("secret", "password", "token"), frozenset({"install_cmdline"})


def hidden_param(key: str) -> bool:
    return key in HIDDEN_KEYS or any(w in key for w in HIDDEN_WORDS)


def appliance(app: Appliance) -> dict[str, Any]:
    return {
        "id": app.id,
        "name": app.name,
        "resource": app.resource.display_name if app.resource else None,
        "image": app.image.name if app.image else None,
        "kernel": app.kernel.name if app.kernel else None,
        "mode": app.mode,
        "state": app.state,
        "state_reason": app.state_reason,
        "ha": app.ha,
        "ha_pool": app.ha_pool,
        "ha_state": app.ha_state if app.ha else None,
        "ha_reason": app.ha_reason if app.ha else None,
        "ha_failover_at": iso(app.ha_failover_at),
        "ha_heartbeat_at": iso(app.ha_heartbeat_at),
        "params": {k: v for k, v in (app.params or {}).items() if not hidden_param(k)},
    }


def _power(r: Resource) -> dict[str, Any] | None:
    """A resource's power settings as shown: never the password, only whether one is set."""
    from provisiond.powerctl import describe

    return describe(r) if r.power_driver else None
