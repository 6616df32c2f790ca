"""LVM backend against lvs/vgs JSON transcribed from documentation (fixtures/storage/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.backends import BackendUnavailable, LvmBackend, StorageError, VolumeNotFound
from storage.backends.lvm import parse_lvs
from storage.runner import FakeRunner, Result

FIX = Path(__file__).parent / "fixtures" / "storage"
GiB = 1 << 30


def fx(name: str) -> str:
    return (FIX / name).read_text()


def lvm(fixture: str, **kw) -> tuple[LvmBackend, FakeRunner]:
    r = FakeRunner().on(["lvs"], fx(fixture)).on(["vgs"], fx("vgs.json"))
    return LvmBackend("san", runner=r, **kw), r


def test_parse_lvs_skips_pool_and_reads_origin():
    rows = parse_lvs(fx("lvs-thin.json"), "san")
    names = {v.name: (v, attr, pool) for v, attr, pool in rows}
    assert set(names) == {"golden-debian12", "host01", "host02", "root"}
    v, attr, pool = names["host02"]
    assert (v.path, v.size, v.origin, attr, pool) == (
        "/dev/san/host02",
        20 * GiB,
        "golden-debian12",
        "Vwi---tz-k",
        "pool0",
    )
    assert names["root"][0].origin is None and names["root"][2] == ""


@pytest.mark.parametrize("size", ['"1073741824"', '"1073741824B"', "1073741824"])
def test_parse_lvs_size_forms(size):
    row = f'{{"lv_name":"a","lv_size":{size},"origin":"","pool_lv":"","lv_attr":"-wi-a-----"}}'
    text = f'{{"report":[{{"lv":[{row}]}}]}}'
    assert parse_lvs(text, "vg")[0][0].size == GiB


def test_parse_garbage():
    with pytest.raises(StorageError, match="cannot parse"):
        parse_lvs("Volume group not found", "san")


def test_lvs_argv():
    b, r = lvm("lvs-empty.json")
    assert b.list() == []
    fields = "lv_name,lv_size,origin,pool_lv,lv_attr"
    assert r.calls == [
        ["lvs", "--reportformat", "json", "-o", fields, "--units", "b", "--nosuffix", "san"]
    ]


@pytest.mark.parametrize(
    "fixture, kw, source, expected",
    [
        ("lvs-thin.json", {"thin_pool": "pool0"}, "golden-debian12",
         ["lvcreate", "-s", "-kn", "-n", "new", "san/golden-debian12"]),
        ("lvs-classic.json", {}, "golden-win2022",
         ["lvcreate", "-s", "-n", "new", "-L", f"{40 * GiB}b", "san/golden-win2022"]),
        ("lvs-classic.json", {"snapshot_size": 4 * GiB}, "golden-win2022",
         ["lvcreate", "-s", "-n", "new", "-L", f"{4 * GiB}b", "san/golden-win2022"]),
    ],
)  # fmt: skip
def test_clone_commands(fixture, kw, source, expected):
    b, r = lvm(fixture, **kw)
    v = b.clone(source, "new")
    assert r.calls[-1] == expected
    assert (v.origin, v.path) == (source, "/dev/san/new")


def test_clone_existing_is_noop_and_missing_source():
    b, r = lvm("lvs-thin.json", thin_pool="pool0")
    assert b.clone("golden-debian12", "host01").origin == "golden-debian12"
    assert all(c[0] == "lvs" for c in r.calls)
    with pytest.raises(VolumeNotFound):
        b.clone("nope", "x")


@pytest.mark.parametrize(
    "kw, expected",
    [
        ({"thin_pool": "pool0"}, ["lvcreate", "-y", "-V", f"{GiB}b", "-T", "san/pool0", "-n", "v"]),
        ({}, ["lvcreate", "-y", "-L", f"{GiB}b", "-n", "v", "san"]),
    ],
)
def test_create_commands(kw, expected):
    b, r = lvm("lvs-thin.json", **kw)
    b.create("v", GiB)
    assert r.calls[-1] == expected


def test_create_existing():
    b, _ = lvm("lvs-thin.json")
    assert b.create("root", 10 * GiB).size == 10 * GiB
    with pytest.raises(StorageError, match="exists with size"):
        b.create("root", GiB)


def test_delete_and_resize():
    b, r = lvm("lvs-classic.json")
    b.delete("absent")
    assert all(c[0] == "lvs" for c in r.calls)
    b.delete("host07")
    assert r.calls[-1] == ["lvremove", "-f", "san/host07"]
    b.resize("scratch", 2 * GiB)
    assert r.calls[-1] == ["lvextend", "-L", f"{2 * GiB}b", "san/scratch"]
    with pytest.raises(StorageError, match="shrink"):
        b.resize("scratch", GiB // 2)


def test_usage_from_vgs():
    b, _ = lvm("lvs-empty.json")
    u = b.usage()
    assert (u.total, u.free, u.used) == (536866717696, 418759311360, 536866717696 - 418759311360)


def test_no_device_mapper_from_lvcreate_becomes_unavailable():
    b, r = lvm("lvs-thin.json", thin_pool="pool0")
    r.on(["lvcreate"], Result(5, "", fx("lvcreate-no-dm.txt")))
    with pytest.raises(BackendUnavailable) as ei:
        b.clone("golden-debian12", "host09")
    assert str(ei.value) == (
        "lvm: device-mapper missing (lvcreate: Required device-mapper target(s) not detected); "
        'use backend = "reflink" on btrfs/xfs')  # fmt: skip


@pytest.mark.parametrize(
    "dm, tools, lvs, pool, reason",
    [
        (False, False, None, None, "device-mapper missing (/x/control absent); lvm2 tools missing"),
        (True, False, None, None, "lvm: lvm2 tools missing (lvcreate not in PATH"),
        (True, True, Result(5, "", fx("lvs-vg-missing.txt")), None,
         'lvm: volume group san unusable (Volume group "san" not found'),
        (True, True, Result(0, fx("lvs-classic.json"), ""), "pool0",
         "thin pool san/pool0 not found"),
        (True, True, Result(0, fx("lvs-thin.json"), ""), "pool0", None),
    ],
)  # fmt: skip
def test_check_reasons(tmp_path, dm, tools, lvs, pool, reason):
    ctl = tmp_path / "control"
    if dm:
        ctl.write_text("")
    r = FakeRunner().on(["lvs"], lvs or Result(0, "", ""))
    b = LvmBackend("san", thin_pool=pool, runner=r, dm_control=str(ctl) if dm else "/x/control",
                   which=lambda p: "/sbin/lvcreate" if tools else None)  # fmt: skip
    if reason is None:
        b.check()
    else:
        with pytest.raises(
            BackendUnavailable, match=reason.replace("(", r"\(").replace(")", r"\)")
        ):
            b.check()
