"""LVM backend against lvs/vgs/lvcreate output recorded on the storage VM (fixtures/storage/lvm-vm).

The fixtures (and the commands that made them: tests/testbed/lvmrecord.py) come
from lvm2 on the test bed's storage VM; that test bed checks they still match.
"""

from __future__ import annotations

import pytest

from storage.backends import BackendUnavailable, LvmBackend, StorageError, VolumeNotFound
from storage.backends.lvm import parse_lvs
from storage.runner import CommandFailed, FakeRunner, Result
from tests.unit.lvmfixtures import load, loads

GiB, MiB = 1 << 30, 1 << 20


def fx(name: str) -> str:
    return load(name).output


def lvm(fixture: str, **kw) -> tuple[LvmBackend, FakeRunner]:
    r = FakeRunner().on(["lvs"], load(fixture).result()).on(["vgs"], load("vgs.json").result())
    return LvmBackend("san", runner=r, **kw), r


def test_fixtures_were_recorded_with_the_backends_own_commands():
    fields = "lv_name,lv_size,origin,pool_lv,lv_attr"
    for name in ("lvs-empty.json", "lvs-classic.json", "lvs-thin.json", "lvs-vg-missing.txt"):
        rec = load(name)
        assert rec.header["command"] == (
            f"lvs --reportformat json -o {fields} --units b --nosuffix san"
        )
        assert rec.header["lvm2"].startswith("2.03.") and rec.header["kernel"].endswith("-amd64")
    assert (load("lvs-vg-missing.txt").rc, load("lvs-thin.json").rc) == (5, 0)
    assert load("lvcreate-no-dm.txt").result().stderr.startswith("  /sbin/modprobe failed")
    with pytest.raises(ValueError, match="lacks 'stream'"):
        loads("# command: lvs\n# exit status: 0\n{}")


def test_parse_lvs_skips_pool_and_reads_origin():
    rows = parse_lvs(fx("lvs-thin.json"), "san")
    names = {v.name: (v, attr, pool) for v, attr, pool in rows}
    assert set(names) == {"golden-debian12", "golden-win2022", "host01", "host02", "host07",
                          "scratch"}  # fmt: skip
    v, attr, pool = names["host02"]  # a thin snapshot without -kn: activation skipped
    assert (v.path, v.size, v.origin, attr, pool) == (
        "/dev/san/host02",
        128 * MiB,
        "golden-debian12",
        "Vwi---tz-k",
        "pool0",
    )
    assert names["host01"][1] == "Vwi-a-tz--"  # -kn: active
    assert names["host07"][0].origin == "golden-win2022" and names["host07"][1][0] == "s"
    assert names["scratch"][0].origin is None and names["scratch"][2] == ""


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
         ["lvcreate", "-s", "-n", "new", "-L", f"{64 * MiB}b", "san/golden-win2022"]),
        ("lvs-classic.json", {"snapshot_size": 4 * MiB}, "golden-win2022",
         ["lvcreate", "-s", "-n", "new", "-L", f"{4 * MiB}b", "san/golden-win2022"]),
        ("lvs-thin.json", {"thin_pool": "pool0"}, "golden-win2022",  # classic origin, thin VG
         ["lvcreate", "-s", "-n", "new", "-L", f"{64 * MiB}b", "san/golden-win2022"]),
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
    assert b.create("scratch", 16 * MiB).size == 16 * MiB
    with pytest.raises(StorageError, match="exists with size"):
        b.create("scratch", GiB)


@pytest.mark.parametrize(
    "fixture, message",
    [
        ("lvcreate-exists.txt", 'Logical Volume "scratch" already exists in volume group "san"'),
        ("lvcreate-no-space.txt", 'Volume group "san" has insufficient free space (153 extents)'),
    ],
)
def test_lvcreate_refusal_is_an_error_with_lvms_words(fixture, message):
    """lvcreate's own refusal (here: an LV made behind our back, a full VG) fails the create
    with its stderr; nothing else is run."""
    b, r = lvm("lvs-empty.json")
    r.on(["lvcreate"], load(fixture).result())
    with pytest.raises(CommandFailed) as ei:
        b.create("scratch", 16 * MiB)
    assert message in str(ei.value) + ei.value.stderr
    assert [c[0] for c in r.calls] == ["lvs", "lvcreate"]


def test_delete_and_resize():
    b, r = lvm("lvs-classic.json")
    b.delete("absent")
    assert all(c[0] == "lvs" for c in r.calls)
    b.delete("host07")
    assert r.calls[-1] == ["lvremove", "-f", "san/host07"]
    b.resize("scratch", 32 * MiB)
    assert r.calls[-1] == ["lvextend", "-L", f"{32 * MiB}b", "san/scratch"]
    with pytest.raises(StorageError, match="shrink"):
        b.resize("scratch", 8 * MiB)


def test_usage_from_vgs():
    b, _ = lvm("lvs-empty.json")
    u = b.usage()
    assert (u.total, u.free, u.used) == (1069547520, 641728512, 1069547520 - 641728512)


def test_no_device_mapper_from_lvcreate_becomes_unavailable():
    b, r = lvm("lvs-thin.json", thin_pool="pool0")
    r.on(["lvcreate"], load("lvcreate-no-dm.txt").result())
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
        (True, True, load("lvs-vg-missing.txt").result(), None,
         'lvm: volume group san unusable (Volume group "san" not found'),
        (True, True, load("lvs-classic.json").result(), "pool0",
         "thin pool san/pool0 not found"),
        (True, True, load("lvs-thin.json").result(), "pool0", None),
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
