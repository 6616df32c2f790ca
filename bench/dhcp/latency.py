"""DHCP latency benchmark: per-exchange DORA percentiles at a fixed offered rate.

Owns the latency harness (perfdhcp reports only avg/max, so the goal
"p99 < 10 ms at 1,000/s" needs this). Same lab as bench/dhcp/run.py: the
server in a private namespace on the lab bridge (10.N.0.1) pinned to CPU 0,
this script's client mode in a client namespace (10.N.0.2) pinned to CPU 1.
The client acts as a relay agent like perfdhcp (RFC 2131 section 4.1:
giaddr = its own address, unicast to server port 67, replies come back to
port 67), one distinct random MAC per exchange; it paces DISCOVERs at the
offered rate, answers each OFFER with a REQUEST (RFC 2131 section 3.1 step
3: options 50 and 54 from the OFFER) and stamps every step with
``time.perf_counter_ns``. An exchange without its ACK after 1 s is a drop.

Client-side lag is measured, not assumed away: how late each DISCOVER left
versus its schedule, and how long each reply sat in the socket before the
client read it (kernel SO_TIMESTAMPNS versus the read time).

    sudo .venv/bin/python bench/dhcp/latency.py [--rates 1000,2000,4000] [--duration 10]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from pxe.dhcp.codec import (  # noqa: E402
    ACK,
    BOOTREQUEST,
    DISCOVER,
    NAK,
    OFFER,
    REQUEST,
    DhcpDecodeError,
    DhcpPacket,
    Opt,
    decode,
    encode,
)

SERVER_CPU, CLIENT_CPU = "0", "1"
PORT = 67  # relay agents talk server port to server port (RFC 2131 section 4.1)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # linux asm-generic/socket.h
MAX_EXCHANGES = 200_000
# The client runs SCHED_FIFO so that other work on its core cannot delay its
# sends and reads (it sleeps in select between packets; bounded in time).
CLIENT_PRIO = ["chrt", "-f", "10"]


# -- client: runs inside the client namespace ------------------------------------
def discover(xid: int, mac: str, giaddr: str) -> bytes:
    return encode(
        DhcpPacket(
            op=BOOTREQUEST,
            xid=xid,
            chaddr=mac,
            hops=1,
            giaddr=giaddr,
            options={Opt.MESSAGE_TYPE: bytes((DISCOVER,)), Opt.PARAM_REQUEST: b"\x01\x03\x06"},
        )
    )


def request(offer: DhcpPacket, giaddr: str) -> bytes:
    return encode(
        DhcpPacket(
            op=BOOTREQUEST,
            xid=offer.xid,
            chaddr=offer.chaddr,
            hops=1,
            giaddr=giaddr,
            options={
                Opt.MESSAGE_TYPE: bytes((REQUEST,)),
                Opt.REQUESTED_IP: socket.inet_aton(offer.yiaddr),
                Opt.SERVER_ID: offer.options.get(Opt.SERVER_ID, b""),
                Opt.PARAM_REQUEST: b"\x01\x03\x06",
            },
        )
    )


def random_macs(n: int, rng: random.Random) -> list[str]:
    """n distinct locally administered unicast MACs (first octet x2/x6/xA/xE)."""
    seen: set[int] = set()
    while len(seen) < n:
        seen.add((rng.getrandbits(48) & ~(0x01 << 40)) | (0x02 << 40))
    return [m.to_bytes(6, "big").hex(":") for m in seen]


def percentiles(values_ns: list[int]) -> dict[str, float | None]:
    """Nearest-rank p50/p90/p99/max in ms."""
    if not values_ns:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    v = sorted(values_ns)

    def rank(q: float) -> float:
        return round(v[min(len(v) - 1, max(0, -(-len(v) * q // 100) - 1))] / 1e6, 3)

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": round(v[-1] / 1e6, 3)}


class Client:
    """One closed run: ``rate`` DISCOVERs/s for ``duration`` s, then wait for stragglers."""

    def __init__(self, server: str, giaddr: str, rate: int, duration: float, timeout: float):
        self.server, self.giaddr = (server, PORT), giaddr
        self.n = min(MAX_EXCHANGES, int(rate * duration))
        self.period_ns, self.timeout_ns = int(1e9 / rate), int(timeout * 1e9)
        self.macs = random_macs(self.n, random.Random())
        base = random.getrandbits(32)
        self.xids = [(base + i) & 0xFFFFFFFF for i in range(self.n)]
        self.pending: dict[int, list[int]] = {}  # xid -> [t_discover, t_offer, t_request]
        self.deadlines: deque[tuple[int, int]] = deque()
        self.do, self.dora, self.ra, self.lag, self.rxq = [], [], [], [], []
        self.count = dict.fromkeys(("sent", "offers", "acks", "naks", "drops", "late", "bad"), 0)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind((giaddr, PORT))
        self.sock.setblocking(False)

    def run(self) -> dict:
        sock, now_ns = self.sock, time.perf_counter_ns
        start = now_ns() + 50_000_000
        i, hard_stop = 0, start + self.n * self.period_ns + self.timeout_ns + 5_000_000_000
        while i < self.n or self.pending:
            now = now_ns()
            if now > hard_stop:
                break
            while i < self.n and start + i * self.period_ns <= now:
                xid = self.xids[i]
                pkt = discover(xid, self.macs[i], self.giaddr)
                t = now_ns()
                sock.sendto(pkt, self.server)
                self.lag.append(t - (start + i * self.period_ns))
                self.pending[xid] = [t, 0, 0]
                self.deadlines.append((t + self.timeout_ns, xid))
                self.count["sent"] += 1
                i += 1
            self._drain()
            self._expire(now_ns())
            wake = start + i * self.period_ns if i < self.n else hard_stop
            if self.deadlines:
                wake = min(wake, self.deadlines[0][0])
            wait = (wake - now_ns()) / 1e9
            if wait > 0:
                select.select([sock], [], [], wait)
        elapsed = (now_ns() - start) / 1e9
        sock.close()
        return self.report(elapsed)

    def _drain(self) -> None:
        sock, now_ns = self.sock, time.perf_counter_ns
        while True:
            try:
                data, anc, _, _ = sock.recvmsg(2048, 64)
            except BlockingIOError:
                return
            t = now_ns()
            wall = time.time_ns()
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
                    sec, nsec = struct.unpack_from("qq", raw)
                    self.rxq.append(max(0, wall - (sec * 1_000_000_000 + nsec)))
            try:
                p = decode(data)
            except DhcpDecodeError:
                self.count["bad"] += 1
                continue
            self._on_reply(p, t)

    def _on_reply(self, p: DhcpPacket, t: int) -> None:
        st = self.pending.get(p.xid)
        kind = p.message_type
        if st is None:
            self.count["late"] += 1
        elif kind == OFFER and not st[1]:
            st[1] = t
            self.count["offers"] += 1
            self.do.append(t - st[0])
            pkt = request(p, self.giaddr)
            st[2] = time.perf_counter_ns()
            self.sock.sendto(pkt, self.server)
        elif kind == ACK and st[1]:
            self.count["acks"] += 1
            self.dora.append(t - st[0])
            self.ra.append(t - st[2])
            del self.pending[p.xid]
        elif kind == NAK:
            self.count["naks"] += 1
            del self.pending[p.xid]

    def _expire(self, now: int) -> None:
        dl = self.deadlines
        while dl and dl[0][0] <= now:
            _, xid = dl.popleft()
            if self.pending.pop(xid, None) is not None:
                self.count["drops"] += 1

    def report(self, elapsed: float) -> dict:
        c = self.count
        lag = percentiles(self.lag)
        return {
            **c,
            "completed": c["acks"],
            "drops_pct": round(100.0 * (c["sent"] - c["acks"]) / c["sent"], 2) if c["sent"] else 0,
            "offered": self.n,
            "elapsed_s": round(elapsed, 2),
            "do_ms": percentiles(self.do),
            "dora_ms": percentiles(self.dora),
            "ra_ms": percentiles(self.ra),
            "send_lag_ms": lag,
            "late_sends_1ms": sum(1 for x in self.lag if x > 1_000_000),
            "rx_queue_ms": percentiles(self.rxq),
        }


# -- harness: labs, servers, one client run per (rate, server) --------------------
def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all threads (proc(5) fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_one(lab, client, name: str, rate: int, args, tmp: Path) -> dict:
    work = tmp / f"{name}-{rate}"
    work.mkdir()
    prio = CLIENT_PRIO if args.server_rt else []
    import run as dhcprun  # bench/dhcp/run.py: the same servers, started the same way

    srv = dhcprun.start_server(lab, name, work, tuple(prio))
    try:
        before, cpu0 = os.getloadavg(), cpu_s(srv.pid)
        r = client.run(
            ["taskset", "-c", CLIENT_CPU, *CLIENT_PRIO, sys.executable, __file__, "--client",
             "--server", lab.server_ip, "--giaddr", f"{lab.net}.2", "--rate", str(rate),
             "--duration", str(args.duration), "--timeout", str(args.timeout)],
            check=False, timeout=args.duration + args.timeout + 30,
        )  # fmt: skip
        if r.returncode != 0:
            return {"error": r.stderr[-800:]}
        res = json.loads(r.stdout)
        cpu = cpu_s(srv.pid) - cpu0
        res["server_cpu_pct"] = round(100 * cpu / res["elapsed_s"], 1)
        res["server_cpu_us_per_dora"] = round(1e6 * cpu / max(1, res["completed"]))
        res["load"] = [round(x, 2) for x in (*before, *os.getloadavg())]
        return res
    finally:
        srv.terminate()
        try:
            srv.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            srv.kill()


def line(name: str, rate: int, r: dict) -> str:
    if "error" in r:
        return f"{name:10s} {rate:5d}/s  ERROR {r['error']}"
    do, dora, lag = r["do_ms"], r["dora_ms"], r["send_lag_ms"]
    return (
        f"{name:10s} {rate:5d}/s  done {r['completed']:6d}  drops {r['drops_pct']:5.2f}%  "
        f"D->O p50/p90/p99/max {do['p50']}/{do['p90']}/{do['p99']}/{do['max']} ms  "
        f"DORA {dora['p50']}/{dora['p90']}/{dora['p99']}/{dora['max']} ms  "
        f"send lag p99 {lag['p99']} ms (>1ms: {r['late_sends_1ms']})  "
        f"rx queue p99 {r['rx_queue_ms']['p99']} ms  server CPU {r['server_cpu_pct']}% "
        f"({r['server_cpu_us_per_dora']} us/DORA)  load {r['load']}"
    )


def harness(args) -> int:
    from tests.netlab import Lab, sh

    for tool in ("taskset", "nsenter"):
        if not shutil.which(tool):
            sys.exit(f"needs {tool}")
    rates = [int(x) for x in args.rates.split(",")]
    names = [n for n in args.servers.split(",") if n != "kea" or shutil.which("kea-dhcp4")]
    results: dict[int, dict[str, dict]] = {}
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    with tempfile.TemporaryDirectory() as t, Lab("lat") as lab:
        client = lab.add_client()
        sh("ip", "-n", client.name, "addr", "add", f"{lab.net}.2/24", "dev", "eth0")
        for rate in rates:
            results[rate] = {}
            for name in names:
                r = run_one(lab, client, name, rate, args, Path(t))
                results[rate][name] = r
                print(line(name, rate, r), flush=True)
            p, k = results[rate].get("provisiond"), results[rate].get("kea")
            if p and k and "error" not in p and "error" not in k and k["dora_ms"]["p99"]:
                ratio = p["dora_ms"]["p99"] / k["dora_ms"]["p99"]
                print(f"{'':10s} {rate:5d}/s  provisiond/kea DORA p99 = {ratio:.2f}x", flush=True)
    print(f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="1000", help="comma-separated exchanges/s")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--timeout", type=float, default=1.0, help="per exchange; later = drop")
    ap.add_argument("--servers", default="provisiond,kea")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument(
        "--server-rt", action="store_true", help="servers SCHED_FIFO too (shields them from load)"
    )
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--server", help=argparse.SUPPRESS)
    ap.add_argument("--giaddr", help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        c = Client(args.server, args.giaddr, args.rate, args.duration, args.timeout)
        print(json.dumps(c.run()))
        return 0
    return harness(args)


if __name__ == "__main__":
    sys.exit(main())
