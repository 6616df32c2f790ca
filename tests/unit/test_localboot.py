"""A local deploy's boot proof: the pure rule, the booted-OS DHCP watch, the report-in slot."""

# ruff: noqa: F811  (pytest fixtures imported from tests.unit.weblab)

from __future__ import annotations

import pytest

from provisiond import reportslot
from provisiond.bootchain import DiskSeen, OsDhcp, OsSeen, judge_disk
from provisiond.config import ConfigError, parse
from pxe.dhcp.codec import DhcpPacket
from tests.unit.weblab import app, ctx  # noqa: F401

WHAT = "wrote and verified golden on /dev/vda of dep2"
UP = OsSeen(count=1, ip="10.0.0.101", vendor="udhcp 1.36.1", armed=True)
ARMED = OsSeen(armed=True)


def seen(fetches=1, dhcp=ARMED, reported=None, now=5.0) -> DiskSeen:
    return DiskSeen(fetches, dhcp, reported, now, 0.0)


@pytest.mark.parametrize(
    "s, phones_home, state, words",
    [
        (seen(), True, "wait", []),
        (seen(), False, "wait", []),
        (seen(fetches=0), False, "wait", []),
        (seen(reported="web1"), True, "active", ["reported in as web1"]),
        (seen(dhcp=UP), False, "active", ["DHCP client asked for 10.0.0.101", "udhcp 1.36.1",
                                          "no report-in slot"]),
        # an image that phones home: its DHCP alone proves nothing yet
        (seen(dhcp=UP), True, "wait", []),
        (seen(fetches=6), True, "failed", [WHAT, "boot loop", "6 times"]),
        (seen(fetches=6, reported="web1"), True, "active", ["web1"]),
        (seen(now=60.0, dhcp=UP), True, "failed", [WHAT, "did not report in within 60 s",
                                                    "10.0.0.101", "1 time since"]),
        (seen(now=60.0, fetches=0), True, "failed", [WHAT, "did not PXE-boot within 60 s"]),
        (seen(now=60.0, fetches=2), True, "failed", [WHAT, "no report-in and no DHCP request",
                                                     "2 times since", "does the disk boot"]),
        (seen(now=60.0, fetches=1), False, "failed", [WHAT, "; no DHCP request from the booted",
                                                      "1 time since"]),
    ],
)  # fmt: skip
def test_judge_disk(s, phones_home, state, words):
    v = judge_disk(s, what=WHAT, phones_home=phones_home, max_fetches=6, timeout=60)
    assert v.state == state, v
    for w in words:
        assert w in v.reason, (w, v.reason)


def packet(mac="52:54:00:00:00:01", vendor=None, user_class=None, requested=None, op=1):
    opts = {53: b"\x01"}
    if vendor:
        opts[60] = vendor.encode()
    if user_class:
        opts[77] = user_class
    if requested:
        opts[50] = bytes(int(x) for x in requested.split("."))
    return DhcpPacket(op=op, xid=1, chaddr=mac, options=opts)


@pytest.mark.parametrize(
    "p, counted",
    [
        (packet(vendor="udhcp 1.36.1", requested="10.0.0.5"), True),
        (packet(), True),  # a client without a vendor class (systemd-networkd, dhcpcd)
        (packet(vendor="PXEClient:Arch:00000:UNDI:002001"), False),
        (packet(vendor="HTTPClient:Arch:00016:UNDI:003001"), False),
        (packet(user_class=b"\x04iPXE"), False),
        (packet(vendor="udhcp", op=2), False),  # a reply, not a request
        (packet(mac="52:54:00:00:00:99", vendor="udhcp"), False),  # not watched
    ],
)
def test_os_dhcp_counts_only_a_watched_booted_os(p, counted):
    w = OsDhcp()
    w.watch("52:54:00:00:00:01")
    w.observe(packet(vendor="udhcp"))  # before the local-boot script: the agent's own client
    assert w.seen("52:54:00:00:00:01").count == 0
    w.arm("52:54:00:00:00:01")
    w.observe(p)
    assert w.seen("52:54:00:00:00:01").count == (1 if counted else 0)
    if counted and p.options.get(50):
        assert w.seen("52:54:00:00:00:01").ip == "10.0.0.5"
    w.unwatch("52:54:00:00:00:01")
    assert w.seen("52:54:00:00:00:01") == OsSeen()


def test_os_dhcp_vendor_class_is_printable_and_short():
    w = OsDhcp()
    w.watch("52:54:00:00:00:01")
    w.arm("52:54:00:00:00:01")
    w.observe(packet(vendor="evil\n\x1b[31m" + "x" * 100))
    vendor = w.seen("52:54:00:00:00:01").vendor
    assert "\n" not in vendor and "\x1b" not in vendor and len(vendor) <= 48


def test_report_slot_round_trip(tmp_path):
    rec = reportslot.record("http://10.0.0.1:8080/install/v1/done", "tok-123_abc")
    assert len(rec) == reportslot.SIZE
    assert reportslot.parse(rec) == {"url": "http://10.0.0.1:8080/install/v1/done",
                                     "token": "tok-123_abc"}  # fmt: skip
    assert reportslot.parse(reportslot.placeholder()) is None
    assert reportslot.parse(b"\0" * 4096) is None
    image = tmp_path / "img"
    image.write_bytes(b"\0" * 2**21)
    assert not reportslot.read_slot(str(image), 2**21)
    with open(image, "r+b") as fh:
        fh.seek(reportslot.OFFSET)
        fh.write(reportslot.placeholder())
    assert reportslot.read_slot(str(image), 2**21)
    assert not reportslot.read_slot(str(image), 2**19)  # too small to hold the slot


@pytest.mark.parametrize("url, token", [("http://a b", "t"), ("http://a", ""), ("u", "a\nb")])
def test_report_slot_refuses_unsafe_values(url, token):
    with pytest.raises(ValueError):
        reportslot.record(url, token)


def test_local_settings():
    assert parse("").local.boot_timeout == 600
    assert parse("").local.confirm_boot is True
    cfg = parse("[local]\nboot_timeout = 30\nmax_script_fetches = 3\nconfirm_boot = false\n")
    assert (cfg.local.boot_timeout, cfg.local.max_script_fetches, cfg.local.confirm_boot) == (
        30, 3, False)  # fmt: skip
    for bad in ("boot_timeout = 1", "max_script_fetches = 1", "confirm_boot = 1", "nope = 1"):
        with pytest.raises(ConfigError):
            parse(f"[local]\n{bad}\n")


LMAC = "52:54:00:7e:00:0a"


@pytest.mark.parametrize(
    "state, params, action",
    [
        ("starting", {}, "deploy"),  # the agent writes the disk
        ("starting", {"written": "2026-01-01T00:00:00Z"}, "local-disk"),  # its reboot
        ("active", {}, "local-disk"),
        ("failed", {"written": "2026-01-01T00:00:00Z"}, "agent"),  # nothing keeps looping
    ],
)
def test_policy_of_a_local_appliance(ctx, state, params, action):
    from provisiond import resources
    from provisiond.model import Appliance
    from provisiond.policy import DatabasePolicy
    from pxe.boot import Machine

    with ctx.db.transaction() as s:
        res = resources.ensure(s, LMAC)
        s.add(Appliance(name="loc1", resource_id=res.id, mode="local", state=state, params=params))
    ctx.inventory.refresh()
    spec = DatabasePolicy(ctx.config, ctx.inventory).boot_spec(Machine(mac=LMAC))
    assert spec.action == action
