"""Fan-out's pure logic: udp-sender output, receivers' status, command line, repair plan."""

from __future__ import annotations

import subprocess

import pytest

from provisiond import mcast
from provisiond.mcast import SenderEvent as Ev
from tests.agentlab import AGENT_LIB, BUSYBOX

# lines as udp-sender 20120424 prints them (captured in a namespace run)
LINES = [
    ("Udp-sender 20120424", None),
    ("Broadcasting control to 239.255.77.1", None),
    ("New connection from 10.249.0.12  (#0) 00000009", Ev("connected", 0, "10.249.0.12")),
    ("New connection from 10.249.0.11  (#1) 00000009", Ev("connected", 1, "10.249.0.11")),
    ("Starting transfer: 00000009", Ev("started")),
    ("bytes= 12 196 912  re-xmits=0000000 (  0.0%) slice=1024 -   1",
     Ev("progress", sent=12196912)),
    ("bytes=       1 456  re-xmits=0000080 (  0.6%) slice=1024 -   0",
     Ev("progress", sent=1456, retransmits=80)),
    ("Timeout notAnswered=[1] notReady=[1] nrAns=1 nrRead=1 nrPart=2 avg=9022", None),
    ("Dropping client #1 because of timeout", Ev("dropped", 1)),
    ("Disconnecting #1 (10.249.0.12)", Ev("disconnected", 1, "10.249.0.12")),
    ("Transfer complete.", Ev("complete")),
    ("", None),
    ("bytes= lots", None),
]  # fmt: skip


@pytest.mark.parametrize(("line", "want"), LINES)
def test_parse_sender_line(line, want):
    assert mcast.parse_sender_line(line) == want


@pytest.mark.parametrize(
    ("buffer", "lines", "rest"),
    [
        ("a\rb\nc", ["a", "b"], "c"),
        ("bytes= 1  re-xmits=0\r", ["bytes= 1  re-xmits=0"], ""),
        ("\r\n\r\n", [], ""),
        ("partial", [], "partial"),
    ],
)
def test_split_output(buffer, lines, rest):
    assert mcast.split_output(buffer) == (lines, rest)


def test_receivers_follow_a_session_with_a_drop_and_a_stranger():
    t = mcast.Receivers.of({"10.0.0.2": "a", "10.0.0.3": "b", "10.0.0.4": "c"})
    said = [
        t.apply(mcast.parse_sender_line(line))
        for line in (
            "New connection from 10.0.0.2  (#0) 00000009",
            "New connection from 10.0.0.3  (#1) 00000009",
            "New connection from 10.0.0.99  (#2) 00000009",
            "Starting transfer: 00000009",
            "bytes= 2 097 152  re-xmits=0000003 (  0.0%) slice=1024 -   1",
            "Dropping client #1 because of timeout",
            "Disconnecting #1 (10.0.0.3)",
            "Transfer complete.",
            "Disconnecting #0 (10.0.0.2)",
        )
    ]
    assert said == [
        "fan-out: a (10.0.0.2) joined the multicast session",
        "fan-out: b (10.0.0.3) joined the multicast session",
        "fan-out: 10.0.0.99 joined but is not one of this fan-out's machines",
        "fan-out: transfer started to 2 receivers; not joined: c (they fetch over HTTP)",
        None,
        "fan-out: dropped b (10.0.0.3): it stopped answering; it repairs over HTTP",
        None,
        "fan-out: multicast complete: a done, b dropped, c waiting; 2 MiB sent, 3 packets re-sent",
        None,
    ]
    assert t.strangers == 1 and t.started and t.complete


def test_sender_argv_names_the_interface_ttl_1_and_the_bounds():
    o = mcast.SenderOptions("br0", slot=3, receivers=8, max_wait=5, retries_until_drop=10,
                            max_bitrate="900m")  # fmt: skip
    argv = mcast.sender_argv(o)
    pairs = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert argv[0] == "udp-sender"
    assert pairs["--interface"] == "br0" and pairs["--ttl"] == "1"
    assert pairs["--portbase"] == "9106" and o.portbase % 2 == 0
    assert pairs["--mcast-rdv-address"] == "239.255.77.4"
    assert "--mcast-data-address" in argv and o.data == "239.255.78.4"
    assert argv[argv.index("--min-receivers") + 1] == "8"
    assert argv[argv.index("--max-wait") + 1] == "5"
    assert argv[argv.index("--retries-until-drop") + 1] == "10"
    assert argv[argv.index("--max-bitrate") + 1] == "900m"
    assert "--nokbd" in argv and "--nopointopoint" in argv


@pytest.mark.parametrize(
    "kw",
    [
        {"interface": ""},
        {"interface": "eth0; rm -rf /"},
        {"interface": "br0", "slot": mcast.SLOTS},
        {"interface": "br0", "receivers": 0},
        {"interface": "br0", "max_bitrate": "fast"},
    ],
)
def test_sender_options_refuse_bad_values(kw):
    with pytest.raises(ValueError):
        mcast.SenderOptions(**kw)


IP_ADDR = """1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
4: br0    inet 10.110.0.1/24 scope global br0\\       valid_lft forever preferred_lft forever
7: eth1@if8    inet 192.168.5.2/24 brd 192.168.5.255 scope global eth1
"""


@pytest.mark.parametrize(
    ("address", "want"),
    [("10.110.0.1", "br0"), ("127.0.0.1", "lo"), ("192.168.5.2", "eth1"), ("10.110.0.2", None)],
)
def test_interface_of(address, want):
    assert mcast.interface_of(address, IP_ADDR) == want


# --- the agent's repair plan (commands.d/fanout.sh, busybox awk) --------------------


@pytest.mark.parametrize(
    ("k", "verified", "plan"),
    [
        (5, [0, 1, 2, 3, 4], ""),  # all came by multicast
        (5, [], "tail 0\n"),  # nothing came: one stream
        (5, [0, 1, 3, 4], "one 2\n"),  # one chunk failed its sha256
        (6, [0, 1, 2], "tail 3\n"),  # dropped after position 2
        (6, [1, 2, 3, 4], "one 0\none 5\n"),  # a one-chunk tail is a single
        (8, [4, 0, 2, 2], "one 1\none 3\ntail 5\n"),  # any order, duplicates
        (1, [], "one 0\n"),
        (0, [], ""),
    ],
)
def test_repair_plan(k, verified, plan):
    if BUSYBOX is None:
        pytest.skip(reason="needs busybox (busybox-static)")
    script = f". {AGENT_LIB}/commands.d/fanout.sh; repair_plan {k}"
    out = subprocess.run([BUSYBOX, "sh", "-c", script], capture_output=True, text=True,
                         input="".join(f"{p}\n" for p in verified), check=True)  # fmt: skip
    assert out.stdout == plan
