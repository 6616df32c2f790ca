"""``lvm`` backend: logical volumes in one VG; clones are LVM snapshots.

Thin (``thin_pool`` set): volumes are thin LVs in the pool and a clone is a
thin snapshot, ``lvcreate -s -kn -n NEW VG/ORIGIN`` (no size; ``-kn`` clears
the activation-skip flag thin snapshots get by default, so the clone can be
activated and exported). Classic (no pool): a clone is a COW snapshot,
``lvcreate -s -n NEW -L SIZE VG/ORIGIN``, SIZE = ``snapshot_size`` or the
origin's size (a full-size COW area can never overflow and invalidate the clone).

State is read with ``lvs --reportformat json -o lv_name,lv_size,origin,pool_lv,
lv_attr --units b --nosuffix VG`` (lvs(8), lvmreport(7)). All commands go
through the Runner; nothing here touches device-mapper directly.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable

from storage.backends.base import (
    BackendUnavailable,
    StorageError,
    Usage,
    Volume,
    VolumeNotFound,
    check_name,
    check_size,
)
from storage.runner import CommandFailed, Runner

LVS_FIELDS = "lv_name,lv_size,origin,pool_lv,lv_attr"
INSTEAD = 'use backend = "reflink" on btrfs/xfs'
NO_DM = "Required device-mapper target(s) not detected"


def _bytes(v: str | int) -> int:
    return int(str(v).strip().rstrip("Bb") or 0)


def parse_report(text: str, kind: str) -> list[dict]:
    """Rows of an lvm ``--reportformat json`` report (``kind`` = "lv" or "vg")."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise StorageError(f"lvm: cannot parse JSON report: {e}")
    rows: list[dict] = []
    for section in doc.get("report", []):
        rows.extend(section.get(kind, []))
    return rows


def parse_lvs(text: str, vg: str) -> list[tuple[Volume, str, str]]:
    """(Volume, lv_attr, pool_lv) for each user-visible LV; pools and hidden LVs skipped."""
    out = []
    for r in parse_report(text, "lv"):
        name, attr = r["lv_name"], r.get("lv_attr", "")
        if name.startswith("[") or attr[:1] in ("t", "e"):  # hidden/internal, pool, metadata
            continue
        vol = Volume(name, f"/dev/{vg}/{name}", _bytes(r["lv_size"]), r.get("origin") or None)
        out.append((vol, attr, r.get("pool_lv", "")))
    return out


class LvmBackend:
    kind = "lvm"

    def __init__(
        self,
        vg: str,
        *,
        thin_pool: str | None = None,
        snapshot_size: int | None = None,
        runner: Runner | None = None,
        dm_control: str = "/dev/mapper/control",
        which: Callable[[str], str | None] = shutil.which,
    ) -> None:
        self.vg, self.thin_pool, self.snapshot_size = vg, thin_pool, snapshot_size
        self.runner = runner or Runner()
        self.dm_control, self.which = dm_control, which

    # -- protocol -------------------------------------------------------
    def check(self) -> None:
        problems = self._remote_problems() if self.remote else self._local_problems()
        if problems:
            raise BackendUnavailable(f"lvm: {'; '.join(problems)}; {INSTEAD}")
        try:
            self._lvs()
        except CommandFailed as e:
            raise BackendUnavailable(
                f"lvm: volume group {self.vg} unusable ({e.stderr}); {INSTEAD}"
            )
        if self.thin_pool and not self._is_pool(self.thin_pool):
            raise BackendUnavailable(f"lvm: thin pool {self.vg}/{self.thin_pool} not found")

    def path(self, name: str) -> str:
        return f"/dev/{self.vg}/{check_name(name)}"

    def list(self) -> list[Volume]:
        return [v for v, _, _ in self._lvs()]

    def get(self, name: str) -> Volume | None:
        check_name(name)
        return next((v for v in self.list() if v.name == name), None)

    def create(self, name: str, size: int) -> Volume:
        check_size(size)
        vol = self.get(name)
        if vol is not None:
            if vol.size != size:
                raise StorageError(f"LV {self.vg}/{name} exists with size {vol.size}, not {size}")
            return vol
        if self.thin_pool:
            argv = ["lvcreate", "-y", "-V", f"{size}b", "-T", f"{self.vg}/{self.thin_pool}"]
            self._lvm([*argv, "-n", name])
        else:
            self._lvm(["lvcreate", "-y", "-L", f"{size}b", "-n", name, self.vg])
        return Volume(name, self.path(name), size)

    def clone(self, source_name: str, new_name: str) -> Volume:
        check_name(new_name)
        rows = {v.name: (v, pool) for v, _, pool in self._lvs()}
        if new_name in rows:
            return rows[new_name][0]
        if source_name not in rows:
            raise VolumeNotFound(f"clone source {self.vg}/{source_name} not found")
        src, pool = rows[source_name]
        origin = f"{self.vg}/{source_name}"
        if pool:  # thin origin: thin snapshot, no size, allocation from the pool
            self._lvm(["lvcreate", "-s", "-kn", "-n", new_name, origin])
        else:
            cow = self.snapshot_size or src.size
            self._lvm(["lvcreate", "-s", "-n", new_name, "-L", f"{cow}b", origin])
        return Volume(new_name, self.path(new_name), src.size, source_name)

    def delete(self, name: str) -> None:
        if self.get(name) is not None:
            self._lvm(["lvremove", "-f", f"{self.vg}/{name}"])

    def resize(self, name: str, size: int) -> Volume:
        check_size(size)
        vol = self.get(name)
        if vol is None:
            raise VolumeNotFound(f"LV {self.vg}/{name} not found")
        if size < vol.size:
            raise StorageError(f"refusing to shrink {self.vg}/{name} from {vol.size} to {size}")
        if size > vol.size:
            self._lvm(["lvextend", "-L", f"{size}b", f"{self.vg}/{name}"])
        return Volume(name, vol.path, size, vol.origin)

    def usage(self) -> Usage:
        argv = ["vgs", "--reportformat", "json", "-o", "vg_name,vg_size,vg_free"]
        res = self.runner.run([*argv, "--units", "b", "--nosuffix", self.vg])
        row = next(iter(parse_report(res.stdout, "vg")), None)
        if row is None:
            raise StorageError(f"lvm: vgs reported nothing for {self.vg}")
        total, free = _bytes(row["vg_size"]), _bytes(row["vg_free"])
        return Usage(total=total, used=total - free, free=free)

    # -- storage hosts ------------------------------------------------------
    @property
    def remote(self) -> bool:
        """True when the runner runs commands on a storage host (storage.ssh.SshRunner)."""
        return bool(getattr(self.runner, "remote", False))

    def ensure_vg(self, devices: tuple[str, ...], thin_pool_size: int = 0) -> list[str]:
        """Create the VG on ``devices`` and the thin pool (``thin_pool_size`` bytes) if absent.

        Idempotent; returns what it did. Devices already in another VG or
        holding data are refused by vgcreate itself (its stderr is the error).
        """
        done = []
        vgs = self.runner.run(["vgs", "--reportformat", "json", "-o", "vg_name"]).stdout
        if self.vg not in {r["vg_name"] for r in parse_report(vgs, "vg")}:
            if not devices:
                raise StorageError(
                    f"lvm: volume group {self.vg} does not exist and no devices are configured "
                    'to create it on (devices = ["/dev/…"] in its [[storage]] entry)'
                )
            self._lvm(["vgcreate", "-y", self.vg, *devices])
            done.append(f"created volume group {self.vg} on {', '.join(devices)}")
        if self.thin_pool and not self._is_pool(self.thin_pool):
            if thin_pool_size <= 0:
                raise StorageError(
                    f"lvm: thin pool {self.vg}/{self.thin_pool} missing; set thin_pool_size"
                )
            size = f"{check_size(thin_pool_size)}b"
            self._lvm(["lvcreate", "-y", "-L", size, "-T", f"{self.vg}/{self.thin_pool}"])
            done.append(f"created thin pool {self.vg}/{self.thin_pool}")
        return done

    # -- helpers ----------------------------------------------------------
    def _local_problems(self) -> list[str]:
        problems = []
        if not os.path.exists(self.dm_control):
            problems.append(f"device-mapper missing ({self.dm_control} absent)")
        if not self.which("lvcreate"):
            problems.append("lvm2 tools missing (lvcreate not in PATH: apt-get install lvm2)")
        return problems

    def _remote_problems(self) -> list[str]:
        """The same checks as _local_problems, on the storage host, in one command."""
        script = (f"test -e {self.dm_control} || echo nodm; "
                  "command -v lvcreate >/dev/null || echo nolvm")  # fmt: skip
        out = self.runner.run(["sh", "-c", script]).stdout.split()
        problems = []
        if "nodm" in out:
            problems.append(f"device-mapper missing on the storage host ({self.dm_control} "
                            "absent: modprobe dm_mod dm_thin_pool there)")  # fmt: skip
        if "nolvm" in out:
            problems.append("lvm2 tools missing on the storage host (apt-get install lvm2 there)")
        return problems

    def _lvs(self) -> list[tuple[Volume, str, str]]:
        argv = ["lvs", "--reportformat", "json", "-o", LVS_FIELDS, "--units", "b", "--nosuffix"]
        return parse_lvs(self.runner.run([*argv, self.vg]).stdout, self.vg)

    def _is_pool(self, lv: str) -> bool:
        argv = ["lvs", "--reportformat", "json", "-o", LVS_FIELDS, "--units", "b", "--nosuffix"]
        rows = parse_report(self.runner.run([*argv, self.vg]).stdout, "lv")
        return any(r["lv_name"] == lv and r.get("lv_attr", "")[:1] == "t" for r in rows)

    def _lvm(self, argv: list[str]) -> None:
        try:
            self.runner.run(argv)
        except CommandFailed as e:
            if NO_DM in e.stderr:
                raise BackendUnavailable(
                    f"lvm: device-mapper missing ({argv[0]}: {NO_DM}); {INSTEAD}"
                )
            raise
