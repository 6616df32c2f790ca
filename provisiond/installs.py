"""What an install template sees: the variables of one resource and appliance.

Owns gathering the variables (:func:`variables`) — ``resource`` (inventory,
MACs, addresses), ``params`` (the appliance's parameters over
:data:`DEFAULTS`, then ``--param`` overrides), ``server`` (URLs), ``install``
(one-time token, file-system ids), ``rootfs`` (the archive the agent
unpacks), ``ssh_keys`` and ``template`` — checking the parameters every set
relies on, and the preview that CLI, API and UI share (:func:`preview`).
Rendering itself is :mod:`provisiond.templating`.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisiond import passhash, resources
from provisiond.config import Config
from provisiond.errors import Invalid
from provisiond.hardware import default_disk
from provisiond.model import Appliance, Resource
from provisiond.secretbox import SecretBox, SecretBoxError, for_state_dir, is_sealed
from provisiond.templating import Renderer, TemplateSet

DEFAULT_SET = "fai-debian-12"
PREVIEW_TOKEN = "PREVIEW-one-time-token-minted-at-start"
#: parameters with a default; anything else a template uses must be given
DEFAULTS: dict[str, str] = {
    "template": DEFAULT_SET,
    "rootfs": "debian-12",
    "domain": "",
    "network": "dhcp",
    "root_password_hash": "!",
    "users": "",
    "packages": "",
    "ssh_keys": "",
    "kernel_args": "console=tty0 console=ttyS0,115200",
    "console": "ttyS0,115200",
    "esp_mb": "128",
    "locale": "en_US.UTF-8",
    "keymap": "us",
    "timezone": "UTC",
    "mirror_dir": "/debian",
    "admin_user": "admin",
    "windows_locale": "en-US",
    "windows_timezone": "UTC",
    "windows_image": "Windows Server 2022 SERVERSTANDARD",
    "windows_disk_id": "0",
    "windows_product_key": "",
    "windows_share_user": "",
}
_HOST = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DISK = re.compile(r"^/dev/[a-z0-9][a-z0-9/_-]*$")
_CHOICES = {"firmware": ("bios", "uefi"), "network": ("dhcp", "static")}


@dataclass(frozen=True)
class RootfsRef:
    """The root file-system archive an FAI-style install unpacks."""

    name: str
    sha256: str = ""
    size: int = 0


def check_params(params: Mapping[str, str]) -> None:
    """The parameters every set relies on are well-formed; Invalid names the bad one."""
    if not _HOST.match(params["hostname"]):
        raise Invalid(f"hostname {params['hostname']!r}: use a DNS label (a-z, 0-9, '-')",
                      field="hostname")  # fmt: skip
    if not _DISK.match(params["disk"]) or ".." in params["disk"]:
        raise Invalid(f"disk {params['disk']!r}: write a device path like /dev/sda", "disk")
    for key, allowed in _CHOICES.items():
        if params[key] not in allowed:
            raise Invalid(f"{key} {params[key]!r}: use one of {', '.join(allowed)}", field=key)
    if params.get("prefix"):
        bits = int(params["prefix"]) if params["prefix"].isdigit() else -1
        if not 0 <= bits <= 32:
            raise Invalid(f"prefix {params['prefix']!r}: a number 0..32", field="prefix")


#: words that make a parameter a secret: sealed at rest, never shown (present.HIDDEN_WORDS)
SECRET_WORDS = ("password", "secret")
#: plain passwords that are stored only as their SHA-512 crypt hash, under this key
HASHED = {"root_password": "root_password_hash"}


def protect_params(params: Mapping[str, str], state_dir) -> dict[str, str]:
    """Parameters as they may be stored: no password in clear.

    ``root_password=PLAIN`` becomes ``root_password_hash`` (SHA-512 crypt,
    :mod:`provisiond.passhash`), the only form an answer file needs; a
    ``*_hash`` value must already be a crypt hash. Any other parameter whose
    name holds "password" or "secret" (a Windows administrator password) is
    sealed with the server key (:mod:`provisiond.secretbox`) and opened only
    when a file is rendered for the machine. Already sealed values stay.
    """
    for plain, hashed in HASHED.items():
        if plain in params and hashed in params:
            raise Invalid(f"give {plain} or {hashed}, not both", field=plain)
    out: dict[str, str] = {}
    box: SecretBox | None = None
    for key, value in params.items():
        key, value = str(key), str(value)
        if key in HASHED:
            if not value:
                raise Invalid(f"{key}: empty; give a password or leave it out", field=key)
            out[HASHED[key]] = passhash.sha512_crypt(value)
        elif key.endswith("_hash") and any(w in key for w in SECRET_WORDS):
            if not passhash.is_crypt_hash(value):
                plain = key[: -len("_hash")]
                raise Invalid(
                    f"{key}: not a crypt hash ($6$...); give {plain}=PASSWORD to have it "
                    "hashed, or a hash from `openssl passwd -6`",
                    field=key,
                )
            out[key] = value
        elif any(w in key.lower() for w in SECRET_WORDS) and value and not is_sealed(value):
            box = box or for_state_dir(state_dir)
            out[key] = box.seal(value)
        else:
            out[key] = value
    return out


SEALED_SHOWN = "***"  # what a preview shows for a sealed parameter


def open_params(params: Mapping[str, str], state_dir) -> dict[str, str]:
    """Sealed parameters opened for rendering (only ever into a file for the machine)."""
    out = dict(params)
    box: SecretBox | None = None
    for key, value in params.items():
        if is_sealed(value):
            box = box or for_state_dir(state_dir)
            try:
                out[key] = box.open(value)
            except SecretBoxError as exc:
                raise Invalid(f"parameter {key}: {exc}", field=key) from None
    return out


def _netmask(prefix: int) -> str:
    mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    return ".".join(str((mask >> s) & 255) for s in (24, 16, 8, 0))


def protect_overrides(overrides: Mapping[str, str]) -> dict[str, str]:
    """Preview overrides: a plain root password is hashed (never rendered in clear)."""
    out = {str(k): str(v) for k, v in overrides.items() if k not in HASHED}
    for key, target in HASHED.items():
        if overrides.get(key):
            out[target] = passhash.sha512_crypt(str(overrides[key]))
    return out


def merged_params(res: Resource, app: Appliance | None, overrides: Mapping[str, str]) -> dict:
    inv = res.inventory or {}
    params = {
        **DEFAULTS,
        "hostname": app.name if app else res.display_name,
        "disk": default_disk(inv),
        "firmware": inv.get("firmware") or "bios",
        **{str(k): str(v) for k, v in ((app.params or {}) if app else {}).items()},
        **{str(k): str(v) for k, v in protect_overrides(overrides).items()},
    }
    if params.get("prefix", "").isdigit() and "netmask" not in params:
        params["netmask"] = _netmask(min(int(params["prefix"]), 32))
    check_params(params)
    return params


def fs_ids(res: Resource, app_name: str) -> dict[str, str]:
    """Stable file-system ids for one machine + appliance (fstab and boot loader use them)."""
    root = uuid.uuid5(uuid.NAMESPACE_URL, f"provisiond:{res.mac}:{app_name}:root")
    esp = hashlib.sha256(f"{res.mac}:{app_name}:esp".encode()).hexdigest()[:8].upper()
    return {"root_uuid": str(root), "esp_id": esp, "esp_fstab_id": f"{esp[:4]}-{esp[4:]}"}


def server_keys(config: Config) -> list[str]:
    pub = config.ssh_key_path.with_suffix(".pub")
    try:
        return [line for line in pub.read_text().splitlines() if line.strip()]
    except OSError:
        return []


def variables(
    config: Config,
    res: Resource,
    app: Appliance | None,
    template: str,
    overrides: Mapping[str, str] | None = None,
    token: str = PREVIEW_TOKEN,
    rootfs: RootfsRef | None = None,
    answer: str = "",
    open_sealed: bool = True,
) -> dict[str, Any]:
    """``open_sealed=False`` (a preview for an operator): sealed values render as ``***``."""
    merged = merged_params(res, app, overrides or {})
    if open_sealed:
        params = open_params(merged, config.state_dir)
    else:
        params = {k: SEALED_SHOWN if is_sealed(v) else v for k, v in merged.items()}
    base = config.http_base.rstrip("/")
    name = app.name if app else res.display_name
    extra_keys = [k.strip() for k in params["ssh_keys"].splitlines() if k.strip()]
    rootfs = rootfs or RootfsRef(params["rootfs"])
    answer_dir = f"{base}/install/v1/{res.id}/{token}"
    return {
        "template": template,
        "resource": {
            "id": res.id,
            "name": res.display_name,
            "mac": res.mac,
            "macs": list(res.macs or [res.mac]),
            "ip": res.ip or "",
            "inventory": dict(res.inventory or {}),
        },
        "params": params,
        "server": {
            "url": base,
            "address": str(config.address),
            "rootfs_url": f"{base}/install/v1/rootfs/{rootfs.name}.tar.zst",
            "callback_url": f"{base}/install/v1/done",
            "answer_dir_url": answer_dir,
            "answer_url": f"{answer_dir}/{answer}" if answer else answer_dir,
        },
        "install": {"token": token, **fs_ids(res, name)},
        "rootfs": {"name": rootfs.name, "sha256": rootfs.sha256, "size": rootfs.size},
        "ssh_keys": server_keys(config) + extra_keys,
    }


def _appliance_of(session: Session, res: Resource) -> Appliance | None:
    return session.scalars(select(Appliance).where(Appliance.resource_id == res.id)).first()


def preview(
    session: Session,
    config: Config,
    renderer: Renderer,
    template: str,
    resource_ref: str,
    overrides: Mapping[str, str] | None = None,
    rootfs: RootfsRef | None = None,
) -> dict[str, Any]:
    """What the machine would get: ``{"template", "kind", "files": {path: text}, "cmdline"}``."""
    tset: TemplateSet = renderer.get(template)
    res = resources.find(session, resource_ref)
    app = _appliance_of(session, res)
    # a stored secret (sealed: a Windows administrator password) is for the machine only
    vars_ = variables(config, res, app, tset.name, overrides, rootfs=rootfs, answer=tset.answer,
                      open_sealed=False)  # fmt: skip
    files = renderer.render(template, vars_)
    return {
        "template": template,
        "kind": tset.kind,
        "resource": res.display_name,
        "files": files,
        "cmdline": renderer.cmdline(tset, vars_),
        "initrds": renderer.initrd_urls(tset, vars_),
        "answer": tset.answer,
    }
