"""Issue 11, finding 7: the DNS service must not be an open forwarder or amplifier.

Everything runs in private network namespaces (tests/netlab.py): the real
service (``python -m provisiond.standalone dns``) in the lab's server namespace with an
upstream configured; the upstream is ``tests/dns_upstream.py``, which answers
every question with ~4.3 kB of TXT records whatever the query asked for;
clients are the real ``dig`` (and a small burst sender for the rate limit):

- an *insider* with an address in the ``[[subnet]]`` CIDR;
- an *outsider* with 192.0.2.66, on the same wire but outside every
  configured subnet (an attacker, or a victim whose address is spoofed).

What must hold: forwarding only for clients in configured subnets; UDP
replies capped at the client's size (512 without EDNS) with TC set, so that a
29-octet query never draws a 4 kB answer; per-client-prefix response-rate
limiting with slip; local answers keep working for the subnet's clients.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.netlab import Lab, Netns, sh

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("dig") is None, reason="dig not installed (dnsutils)"),
]
REPO = Path(__file__).resolve().parents[2]
OUTSIDER = "192.0.2.66"  # TEST-NET-1 (RFC 5737): in no configured subnet


class Proc:
    """A python module run in a namespace that prints READY, then JSON on SIGTERM."""

    def __init__(self, ns: Netns, args: list[str], log: Path) -> None:
        self.log = log
        self.proc = ns.popen([sys.executable, "-m", *args], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=open(log, "a"), text=True)  # noqa: SIM115  # fmt: skip
        line = self.proc.stdout.readline()
        assert line.strip() == "READY", log.read_text()[-3000:]

    def stop(self) -> dict:
        if self.proc.poll() is not None:
            return {}
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=10)
        return json.loads(out.strip().splitlines()[-1])


@pytest.fixture
def net(tmp_path, request):
    """Server, upstream, insider and outsider namespaces; DNS with an upstream.

    ``@pytest.mark.parametrize("net", ["KEY = VALUE"], indirect=True)`` adds
    lines to the ``[dns]`` table.
    """
    dns_extra = getattr(request, "param", "")
    with Lab("dnsab") as lab:
        upstream_ns = lab.add_client(address=f"{lab.net}.53")
        insider = lab.add_client(address=f"{lab.net}.10")
        outsider = lab.add_client(address=OUTSIDER)
        sh("ip", "-n", lab.server.name, "addr", "add", "192.0.2.1/24", "dev", "br0")
        sh("ip", "-n", outsider.name, "route", "add", lab.cidr, "dev", "eth0")
        cfg = tmp_path / "provisiond.toml"
        cfg.write_text(
            f'address = "{lab.server_ip}"\nstate_dir = "{tmp_path}"\nlog_level = "debug"\n'
            f"[services]\ndns_port = 53\n"
            f'[dns]\ndomain = "lab.test"\nupstream = "{lab.net}.53"\n{dns_extra}\n'
            f'[[subnet]]\ncidr = "{lab.cidr}"\nmode = "proxy"\n'
        )
        upstream = Proc(upstream_ns, ["tests.dns_upstream", f"{lab.net}.53", "53"],
                        tmp_path / "upstream.log")  # fmt: skip
        dns = Proc(
            lab.server,
            ["provisiond.standalone", "dns", str(cfg), f"web1={lab.net}.51"],
            tmp_path / "dns.log",
        )
        net = {"lab": lab, "insider": insider, "outsider": outsider, "dns": dns,
               "upstream": upstream}  # fmt: skip
        try:
            yield net
        finally:
            dns.stop()
            upstream.stop()


def dig(net, who: str, *args: str) -> str:
    cmd = ["dig", f"@{net['lab'].server_ip}", "+time=2", "+tries=1", *args]
    return net[who].run(cmd, check=False, timeout=20).stdout


def flags(out: str) -> set[str]:
    """The flags of the reply (the last header dig prints; +qr prints the query's first)."""
    return set(re.findall(r";; flags: ([a-z ]*);", out)[-1].split())


def received(out: str) -> int:
    return int(re.search(r"MSG SIZE\s+rcvd: (\d+)", out).group(1))


def test_outsider_is_refused_forwarding_but_gets_local_answers(net):
    out = dig(net, "outsider", "+bufsize=4096", "+ignore", "example.com", "TXT")
    assert "status: REFUSED" in out and received(out) < 100, out
    assert "ra" not in flags(out)  # recursion is not available to this client
    # the zone itself stays public (as BIND's allow-query defaults to any)
    assert dig(net, "outsider", "+short", "web1.lab.test").strip() == f"{net['lab'].net}.51"
    stats = net["dns"].stop()
    assert net["upstream"].stop() == {"udp": 0, "tcp": 0}  # never reached the upstream
    assert stats["forward_denied"] == 1 and stats["refused"] == 1 and stats["forwarded"] == 0


def test_insider_still_gets_forwarded_and_local_answers(net):
    assert dig(net, "insider", "+short", "web1.lab.test").strip() == f"{net['lab'].net}.51"
    out = dig(net, "insider", "example.com", "TXT")  # dig retries over TCP on TC
    assert "status: NOERROR" in out and "ANSWER: 40" in out, out
    assert "ra" in flags(out)


def test_udp_reply_is_capped_at_512_without_edns(net):
    out = dig(net, "insider", "+noedns", "+ignore", "+qr", "example.com", "A")
    assert "QUERY SIZE: 29" in out  # the audit's 29-octet query
    assert received(out) == 29 and "tc" in flags(out), out  # header + question, no data
    assert "QUERY: 1, ANSWER: 0, AUTHORITY: 0, ADDITIONAL: 0" in out.split("Got answer")[1]
    assert net["dns"].stop()["truncated"] == 1


@pytest.mark.parametrize(("bufsize", "limit"), [(1232, 1232), (4096, 1232), (600, 600)])
def test_udp_reply_is_capped_at_the_edns_size(net, bufsize, limit):
    out = dig(net, "insider", f"+bufsize={bufsize}", "+ignore", "example.com", "TXT")
    assert received(out) <= limit and "tc" in flags(out), out
    assert "OPT PSEUDOSECTION" in out  # the OPT record survives truncation (RFC 6891 s7)


BURST = """
import json, socket, sys, time
from dnslib import DNSRecord
server, count, pace = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE: keep every reply
s.connect((server, 53))
for i in range(count):
    q = DNSRecord.question("web1.lab.test"); q.header.id = i; s.send(q.pack())
    time.sleep(pace)
full, tc = 0, 0
s.settimeout(1.5)
try:
    while True:
        r = DNSRecord.parse(s.recv(4096))
        if r.header.tc: tc += 1
        else: full += 1
except TimeoutError:
    pass
print(json.dumps({"full": full, "tc": tc}))
"""


def burst(net, who: str, count: int, pace: float) -> dict:
    cmd = [sys.executable, "-c", BURST, net["lab"].server_ip, str(count), str(pace)]
    res = net[who].run(cmd, check=False, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_rate_limit_per_client_prefix_with_slip(net):
    got = burst(net, "insider", 400, 0.0025)  # 400 queries in ~1 s; the default is 50/s
    assert got["full"] >= 50, got  # the first burst is answered in full
    assert got["full"] <= 250, got  # ...but not all 400
    assert got["tc"] >= 50, got  # slip 2: every 2nd limited answer goes out truncated
    # a legitimate client meets TC and retries over TCP, which is never limited
    assert dig(net, "insider", "+tcp", "+short", "web1.lab.test").strip().endswith(".51")
    stats = net["dns"].stop()
    udp_queries = stats["queries"] - 1  # the dig over TCP was one (a loaded kernel may drop some)
    assert stats["answered"] - 1 == got["full"] and stats["slipped"] == got["tc"]
    assert stats["rate_limited"] == udp_queries - got["full"]
    assert abs(stats["rate_limited"] - 2 * stats["slipped"]) <= 1


@pytest.mark.parametrize("net", [f'allow = ["{OUTSIDER}"]'], indirect=True)
def test_allow_list_opens_forwarding_to_more_clients(net):
    out = dig(net, "outsider", "+tcp", "example.com", "TXT")
    assert "status: NOERROR" in out and "ANSWER: 40" in out, out
    assert net["dns"].stop()["forward_denied"] == 0


@pytest.mark.parametrize("net", ["rate_limit = 0"], indirect=True)
def test_rate_limit_zero_turns_it_off(net):
    got = burst(net, "insider", 200, 0.001)
    assert got == {"full": 200, "tc": 0}, got
    assert net["dns"].stop()["rate_limited"] == 0
