"""A private PostgreSQL cluster for tests: unix socket only, torn down afterwards.

Owns starting ``initdb`` + ``pg_ctl`` as the ``postgres`` user in a temporary
directory with ``listen_addresses=''`` (no TCP at all), creating a database,
and handing out its SQLAlchemy URL. Skips with the exact reason when the
PostgreSQL server binaries or the psycopg driver are missing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@contextlib.contextmanager
def private_cluster(dbname: str = "provisiond", settings: str = "-c fsync=off") -> Iterator[str]:
    """A private cluster's SQLAlchemy URL; ``settings`` are more ``postgres -c`` options."""
    bindir = _bindir()
    if bindir is None:
        pytest.skip(reason="PostgreSQL server not installed (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip(reason="psycopg not installed (pip install 'psycopg[binary]')")
    if os.geteuid() != 0 or not shutil.which("runuser"):
        pytest.skip(reason="needs root and runuser to run PostgreSQL as its own user")
    # pytest's tmp dirs are 0700 root: the cluster lives in a directory of its own
    base = Path(tempfile.mkdtemp(prefix="provisiond-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    shutil.chown(base, "postgres")
    shutil.chown(sock, "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]

    def run(*argv: str) -> None:
        subprocess.run([*as_pg, *argv], check=True, capture_output=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "-o",
        f"-k {sock} -c listen_addresses='' {settings}", "start")  # fmt: skip
    try:
        run(str(bindir / "createdb"), "-h", str(sock), "-U", "postgres", dbname)
        yield f"postgresql+psycopg://postgres@/{dbname}?host={sock}"
    finally:
        subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)
