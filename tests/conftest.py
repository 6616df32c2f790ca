"""Shared fixtures: a config file + state directory on disk, real SQLite."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp: Path, **overrides) -> Path:
    """A loopback-only config (no DHCP/TFTP/DNS unless asked) under ``tmp``."""
    values = {
        "address": '"127.0.0.1"',
        "http_port": str(overrides.pop("http_port", free_port())),
        "agent_port": str(overrides.pop("agent_port", free_port())),
        "state_dir": f'"{tmp / "state"}"',
    }
    services = {"dhcp": "false", "tftp": "false", "dns": "false"}
    services.update(overrides.pop("services", {}))
    agent = overrides.pop("agent", {})
    values.update(overrides)
    text = "\n".join(f"{k} = {v}" for k, v in values.items())
    text += "\n[services]\n" + "\n".join(f"{k} = {v}" for k, v in services.items())
    if agent:
        text += "\n[agent]\n" + "\n".join(f"{k} = {v}" for k, v in agent.items())
    path = tmp / "provisiond.toml"
    path.write_text(text + "\n")
    return path


def file_storage_world(tmp: Path):
    """A migrated context with one file storage ``local`` and its manager (a fixture's body)."""
    from provisiond import config as configmod
    from provisiond.app import build_context
    from provisiond.storages import StorageManager

    path = write_config(tmp)
    with path.open("a") as fh:
        fh.write(f'[[storage]]\nname = "local"\nbackend = "file"\npath = "{tmp / "v"}"\n')
    ctx = build_context(configmod.load(path))
    ctx.db.migrate()
    yield ctx, StorageManager(ctx.config)
    ctx.db.dispose()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write_config(tmp_path)
