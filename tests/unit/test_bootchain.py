"""Boot-chain rule: when a SAN boot is proven, still under way, or a loop; fetch counts; faults."""

from __future__ import annotations

import pytest

from provisiond import bootchain
from provisiond.bootchain import SanFetches, Seen, judge
from provisiond.config import ConfigError, parse
from pxe.boot import BootAction, BootSpec, SanTarget

INI, T = "iqn.2025-01.test:r1", "iqn.2025-01.test:app1"
RULE = {"initiator": INI, "target": T, "max_fetches": 6, "settle": 20, "timeout": 600}


@pytest.mark.parametrize(
    "seen, state, words",
    [
        # login seen, no fetch since, settle passed: booted
        (Seen(1, 100.0, 110.0, 130.0, 90.0, True), "active", ["iSCSI login of " + INI]),
        # login seen but the settle time has not passed yet
        (Seen(1, 100.0, 110.0, 129.0, 90.0, True), "wait", []),
        # fetched once, no login yet, in time
        (Seen(1, 100.0, None, 150.0, 90.0), "wait", []),
        # six fetches, never a login: a loop before iSCSI worked
        (Seen(6, 200.0, None, 201.0, 90.0), "failed",
         ["boot loop", "fetched its SAN script 6 times", f"no iSCSI login of {INI} to {T}",
          "portal unreachable", "CHAP"]),
        # six fetches with logins in between: the disk did not boot
        (Seen(6, 200.0, None, 201.0, 90.0, True), "failed",
         ["boot loop", "logged in but did not boot", "wrong LUN"]),
        # timeout, never fetched
        (Seen(0, None, None, 700.0, 90.0), "failed",
         [f"no iSCSI login from {INI} to {T} within 600 s", "fetched its SAN script 0 times",
          "powered on"]),
        # timeout after two fetches
        (Seen(2, 300.0, None, 700.0, 90.0), "failed",
         ["within 600 s", "fetched its SAN script 2 times", "reaches the portal"]),
        # the settle rule wins over the fetch count when the boot did settle
        (Seen(6, 100.0, 110.0, 131.0, 90.0, True), "active", []),
    ],
)  # fmt: skip
def test_judge(seen, state, words):
    v = judge(seen, **RULE)
    assert v.state == state, v
    for w in words:
        assert w in v.reason, v.reason


def test_judge_singular_and_zero_settle():
    v = judge(Seen(1, 1.0, None, 700.0, 0.0), **RULE)
    assert "fetched its SAN script 1 time (" in v.reason
    rule = {**RULE, "settle": 0}
    assert judge(Seen(1, 1.0, 5.0, 5.0, 0.0, True), **rule).state == "active"


def test_san_fetches_count_reset_and_last():
    clock = iter([10.0, 11.5, 20.0])
    f = SanFetches(clock=lambda: next(clock))
    assert f.count(7) == 0 and f.last(7) is None
    assert f.fetched(7) == 1 and f.fetched(7) == 2
    assert f.count(7) == 2 and f.last(7) == 11.5 and f.count(8) == 0
    f.reset(7)
    assert f.count(7) == 0 and f.last(7) is None
    assert f.fetched(7) == 1 and f.last(7) == 20.0


SAN = SanTarget("10.0.0.1", T, 1, INI, "app1", "A" * 16)
SPEC = BootSpec(BootAction.SANBOOT, san=SAN, resource_id=3, label="sanboot")


@pytest.mark.parametrize(
    "faults, portal, lun, secret_ok",
    [
        (frozenset(), "10.0.0.1", 1, True),
        (frozenset({"wrong-chap"}), "10.0.0.1", 1, False),
        (frozenset({"wrong-lun"}), "10.0.0.1", 2, True),
        (frozenset({"wrong-portal"}), "192.0.2.1", 1, True),
        (frozenset({"wrong-lun", "wrong-chap"}), "10.0.0.1", 2, False),
    ],
)
def test_inject(faults, portal, lun, secret_ok):
    out = bootchain.inject(SPEC, faults)
    assert out.san.portal == portal and out.san.lun == lun
    assert (out.san.chap_secret == SAN.chap_secret) is secret_ok
    assert 12 <= len(out.san.chap_secret) <= 16


def test_inject_leaves_other_scripts_alone():
    agent = BootSpec(BootAction.AGENT, kernel="k", label="agent")
    assert bootchain.inject(agent, frozenset({"wrong-chap"})) is agent
    assert bootchain.inject(None, frozenset({"wrong-chap"})) is None


def test_active_faults_from_env_and_file(tmp_path):
    assert bootchain.active_faults({}) == frozenset()
    assert bootchain.active_faults({bootchain.FAULT_ENV: "wrong-lun, wrong-chap"}) == {
        "wrong-lun",
        "wrong-chap",
    }
    f = tmp_path / "faults"
    env = {bootchain.FAULT_FILE_ENV: str(f)}
    assert bootchain.active_faults(env) == frozenset()  # file absent: no fault
    f.write_text("wrong-portal\n")
    assert bootchain.active_faults(env) == {"wrong-portal"}
    f.write_text("")
    assert bootchain.active_faults(env) == frozenset()
    with pytest.raises(ValueError, match="unknown test fault"):
        bootchain.active_faults({bootchain.FAULT_ENV: "wrong-everything"})


BASE = ""


def test_iscsi_boot_chain_settings():
    cfg = parse(BASE).iscsi
    assert (cfg.max_script_fetches, cfg.reconcile_interval, cfg.boot_settle) == (6, 30, 20)
    cfg = parse(BASE + "[iscsi]\nmax_script_fetches = 3\nreconcile_interval = 2\n"
                    "boot_settle = 0\n").iscsi  # fmt: skip
    assert (cfg.max_script_fetches, cfg.reconcile_interval, cfg.boot_settle) == (3, 2, 0)
    with pytest.raises(ConfigError, match="max_script_fetches"):
        parse(BASE + "[iscsi]\nmax_script_fetches = 1\n")
    with pytest.raises(ConfigError, match="reconcile_interval"):
        parse(BASE + "[iscsi]\nreconcile_interval = 0\n")
