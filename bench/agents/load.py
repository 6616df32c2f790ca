"""Simulated agents: N machines speaking the sh agent's protocol, from N addresses.

Owns the load side of bench/agents (run.py starts it inside the client
namespace; it is also the interop smoke test's load). For every simulated
machine, in this order, as initrd/rootfs/usr/lib/provisiond/agent does:

1. :func:`obtain_token` — a DHCP DORA with the daemon, relay-style (giaddr
   is this namespace's relay address, like perfdhcp ``-A1``); the leased
   address is added to ``eth0`` (batched ``ip -batch``); then ``GET
   /boot/<mac>.ipxe`` *from that address*, and ``provisiond.token=``,
   ``provisiond.agent=`` (else ``provisiond.url=``) and
   ``provisiond.interval=`` are read from the script;
2. ``POST /agent/v1/register`` with an ed25519 host key and an inventory;
3. heartbeats every interval + 0..2 s of jitter, and long polls
   ``GET /agent/v1/commands?wait=W`` in a loop; a ``run`` command is
   "started" when the poll answer arrives, and its result is posted.

Every request is a new TCP connection bound to the machine's address, as
busybox wget does. Alongside: a queuer posts ``run`` commands through the
REST API at a bounded rate (command latency = queued -> the agent has it),
and probes time ``/healthz`` and ``GET /api/v1/resources``. Bounded: it
stops by itself after ``--duration`` seconds of steady state; results go
to ``--out`` as JSON.

    python bench/agents/load.py --server 10.1.0.1 --relay 10.1.64.1 \\
        --agents 100 --duration 60 --api-token T --out result.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import random
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from pxe.dhcp import codec as c  # noqa: E402

HTTP_TIMEOUT = 20.0  # the sh agent's API_TIMEOUT
STORM_WINDOW = 10.0


# --- a minimal HTTP/1.1 client (one connection per request, like busybox wget) ---------
class HttpError(Exception):
    pass


async def http(
    method: str, url: str, src: str, headers: dict[str, str] | None = None,
    body: bytes = b"", timeout: float = HTTP_TIMEOUT,
) -> tuple[int, bytes]:  # fmt: skip
    m = re.match(r"http://([^:/]+):?(\d*)(/.*)", url)
    if not m:
        raise HttpError(f"not an http URL: {url}")
    host, port, path = m.group(1), int(m.group(2) or 80), m.group(3)
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close",
            "User-Agent: bench-agent", f"Content-Length: {len(body)}"]  # fmt: skip
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, local_addr=(src, 0))
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            raw = await reader.read(-1)
    except TimeoutError:
        raise HttpError("timeout")
    except OSError as exc:
        raise HttpError(f"connect: {exc.strerror or exc}")
    finally:
        if writer is not None:
            writer.close()
    top, _, rest = raw.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise HttpError(f"no HTTP answer ({raw[:40]!r})")
    if any(ln.lower().startswith("transfer-encoding: chunked") for ln in lines[1:]):
        rest = _dechunk(rest)
    return status, rest


def _dechunk(data: bytes) -> bytes:
    out, i = bytearray(), 0
    while i < len(data):
        j = data.index(b"\r\n", i)
        n = int(data[i:j].split(b";")[0], 16)
        if n == 0:
            break
        out += data[j + 2 : j + 2 + n]
        i = j + 2 + n + 2
    return bytes(out)


# --- DHCP, relay-style -------------------------------------------------------------------
class Relay(asyncio.DatagramProtocol):
    """One UDP socket on relay:67 for every DORA; replies matched by xid."""

    def __init__(self) -> None:
        self.waiting: dict[int, asyncio.Future] = {}

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            p = c.decode(data)
        except c.DhcpDecodeError:
            return
        fut = self.waiting.pop(p.xid, None)
        if fut is not None and not fut.done():
            fut.set_result(p)


@dataclass
class Dhcp:
    relay: str
    server: str
    proto: Relay
    transport: asyncio.DatagramTransport

    async def exchange(self, p: c.DhcpPacket, want: int, tries: int = 6) -> c.DhcpPacket:
        loop = asyncio.get_running_loop()
        for attempt in range(tries):
            fut = loop.create_future()
            self.proto.waiting[p.xid] = fut
            self.transport.sendto(c.encode(p), (self.server, 67))
            try:
                reply = await asyncio.wait_for(fut, 2.0 * (attempt + 1))
            except TimeoutError:
                self.proto.waiting.pop(p.xid, None)
                continue
            if reply.message_type == want:
                return reply
            raise HttpError(f"DHCP: got {c.MESSAGE_TYPES.get(reply.message_type)} for {p.chaddr}")
        raise HttpError(f"DHCP: no answer for {p.chaddr}")

    async def lease(self, mac: str) -> str:
        """DISCOVER/OFFER/REQUEST/ACK for ``mac``; the leased address."""
        base = dict(op=c.BOOTREQUEST, chaddr=mac, giaddr=self.relay, hops=1)
        mt = c.Opt.MESSAGE_TYPE
        ipxe = {c.Opt.USER_CLASS: b"iPXE"}  # a booting machine: only its lease earns a token
        offer = await self.exchange(
            c.DhcpPacket(
                xid=random.getrandbits(32), options={mt: bytes([c.DISCOVER]), **ipxe}, **base
            ),
            c.OFFER,
        )
        sid = offer.ip_opt(c.Opt.SERVER_ID) or self.server
        req = c.DhcpPacket(
            xid=random.getrandbits(32),
            options={mt: bytes([c.REQUEST]), c.Opt.REQUESTED_IP: c.ip_bytes(offer.yiaddr),
                     c.Opt.SERVER_ID: c.ip_bytes(sid), **ipxe},
            **base,
        )  # fmt: skip
        ack = await self.exchange(req, c.ACK)
        return ack.yiaddr


class Addresses:
    """Leased addresses onto ``dev``, batched: one ``ip -batch`` per 50 ms of leases."""

    def __init__(self, dev: str = "eth0") -> None:
        self.dev = dev
        self._pending: list[tuple[str, asyncio.Future]] = []
        self._task: asyncio.Task | None = None

    async def add(self, ip: str) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((ip, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush())
        await fut

    async def _flush(self) -> None:
        await asyncio.sleep(0.05)
        batch, self._pending = self._pending, []
        lines = "".join(f"addr add {ip}/32 dev {self.dev}\n" for ip, _ in batch)
        proc = await asyncio.create_subprocess_exec(
            "ip", "-force", "-batch", "-", stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        await proc.communicate(lines.encode())
        for _, fut in batch:
            fut.set_result(None)
        if self._pending:
            self._task = asyncio.create_task(self._flush())


# --- the simulated machine -----------------------------------------------------------------
@dataclass
class Stats:
    heartbeat_ms: list[float] = field(default_factory=list)
    command_ms: list[float] = field(default_factory=list)
    healthz_ms: list[float] = field(default_factory=list)
    resources_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    status5xx: int = 0
    queued: dict[int, float] = field(default_factory=dict)  # job id -> time queued
    started: dict[int, float] = field(default_factory=dict)  # job id -> agent has it
    results_ok: int = 0
    registered_at: list[float] = field(default_factory=list)
    polls: int = 0
    lag_ms: list[float] = field(default_factory=list)  # this process's event-loop lateness

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


def hostkey_line() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pub = Ed25519PrivateKey.generate().public_key()
    raw = pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return raw.decode()


def bench_mac(seed: int, i: int) -> str:
    """Locally administered MACs 02:be:<seed>:<i>: distinct per run and per machine."""
    return f"02:be:{seed & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"


def cmdline_get(script: str, key: str) -> str | None:
    m = re.search(rf"(?:^|\s){re.escape(key)}=(\S+)", script)
    return m.group(1) if m else None


@dataclass
class Agent:
    mac: str
    ip: str = ""
    token: str = ""
    url: str = ""
    interval: int = 10
    hostkey: str = ""


async def obtain_token(
    dhcp: Dhcp, addrs: Addresses, agent: Agent, http_base: str, stats: Stats
) -> None:
    """The boot of ``agent``: a DHCP lease, then its boot script fetched from that address.

    Sets ``agent.ip``, ``.token``, ``.url`` (the agent channel) and ``.interval``.
    """
    if not agent.ip:
        agent.ip = await dhcp.lease(agent.mac)
        await addrs.add(agent.ip)
    status, body = await http("GET", f"{http_base}/boot/{agent.mac.replace(':', '-')}.ipxe",
                              agent.ip)  # fmt: skip
    if status >= 500:
        stats.status5xx += 1
    if status != 200:
        raise HttpError(f"boot script: HTTP {status}")
    text = body.decode()
    token = cmdline_get(text, "provisiond.token")
    if not token:
        raise HttpError("boot script carries no provisiond.token (is a default kernel set?)")
    agent.token = token
    agent.url = (cmdline_get(text, "provisiond.agent") or cmdline_get(text, "provisiond.url")
                 or http_base).rstrip("/")  # fmt: skip
    agent.interval = int(cmdline_get(text, "provisiond.interval") or 10)


async def call(
    agent: Agent, stats: Stats, method: str, path: str, body: bytes = b"",
    timeout: float = HTTP_TIMEOUT, headers: dict | None = None,
) -> tuple[int, bytes]:  # fmt: skip
    hdrs = {"Authorization": f"Bearer {agent.token}", **(headers or {})}
    status, out = await http(method, agent.url + path, agent.ip, hdrs, body, timeout)
    if status >= 500:
        stats.status5xx += 1
    return status, out


async def register(agent: Agent, stats: Stats) -> None:
    inv = {"cpu": {"model": "bench", "count": 2}, "memory_bytes": 2**30,
           "disks": [{"name": "vda", "size": 2**34}],
           "nics": [{"name": "eth0", "mac": agent.mac}]}  # fmt: skip
    body = json.dumps({"mac": agent.mac, "ip": agent.ip, "hostkey": agent.hostkey,
                       "inventory": inv}).encode()  # fmt: skip
    n = 0
    while True:
        try:
            status, _ = await call(agent, stats, "POST", "/agent/v1/register", body,
                                   headers={"Content-Type": "application/json"})  # fmt: skip
            if status == 200:
                stats.registered_at.append(time.monotonic())
                return
            stats.error(f"register HTTP {status}")
        except HttpError as exc:
            stats.error(f"register {exc}")
        n += 1
        await asyncio.sleep(min(2**n, 30) + random.random())


async def heartbeats(agent: Agent, stats: Stats) -> None:
    while True:
        await asyncio.sleep(agent.interval + random.random() * 2)
        t0 = time.monotonic()
        try:
            status, _ = await call(agent, stats, "POST", "/agent/v1/heartbeat")
            if status // 100 == 2:
                stats.heartbeat_ms.append((time.monotonic() - t0) * 1000)
            else:
                stats.error(f"heartbeat HTTP {status}")
        except HttpError as exc:
            stats.error(f"heartbeat {exc}")


async def polls(agent: Agent, stats: Stats, wait: int) -> None:
    fails = 0
    while True:
        t0 = time.monotonic()
        try:
            status, out = await call(agent, stats, "GET", f"/agent/v1/commands?wait={wait}",
                                     timeout=wait + 15)  # fmt: skip
        except HttpError as exc:
            stats.error(f"poll {exc}")
            fails += 1
            await asyncio.sleep(min(2**fails, 30) + random.random())
            continue
        stats.polls += 1
        if status == 200 and out.strip():
            fails = 0
            await run_commands(agent, stats, out.decode())
        elif status == 204:
            fails = 0
            if time.monotonic() - t0 < 2:
                await asyncio.sleep(2)  # the server did not hold the poll (the agent does this)
        else:
            stats.error(f"poll HTTP {status}")
            fails += 1
            await asyncio.sleep(min(2**fails, 30) + random.random())


async def run_commands(agent: Agent, stats: Stats, text: str) -> None:
    fields = dict(line.split("=", 1) for line in text.split("\n") if "=" in line)
    job_id = int(fields["id"])
    stats.started.setdefault(job_id, time.monotonic())
    arg = base64.b64decode(fields.get("arg", "")).decode() if fields.get("arg") else ""
    output = f"bench-agent ran: {arg}\n".encode()
    for _ in range(5):
        try:
            status, _ = await call(agent, stats, "POST", f"/agent/v1/commands/{job_id}/result",
                                   output, headers={"X-Exit-Code": "0"})  # fmt: skip
            if status == 204:
                stats.results_ok += 1
                return
            stats.error(f"result HTTP {status}")
            return
        except HttpError as exc:
            stats.error(f"result {exc}")
            await asyncio.sleep(1)


# --- the operator's side ---------------------------------------------------------------
async def probes(src: str, http_base: str, api_token: str, stats: Stats) -> None:
    auth = {"Authorization": f"Bearer {api_token}"}

    async def one(path: str, into: list[float], every: float) -> None:
        while True:
            t0 = time.monotonic()
            try:
                status, _ = await http("GET", http_base + path, src, auth, timeout=10)
                if status == 200:
                    into.append((time.monotonic() - t0) * 1000)
                else:
                    stats.error(f"probe {path} HTTP {status}")
                    stats.status5xx += status >= 500
            except HttpError as exc:
                stats.error(f"probe {path} {exc}")
                into.append(10_000.0)
            await asyncio.sleep(every)

    await asyncio.gather(one("/healthz", stats.healthz_ms, 0.5),
                         one("/api/v1/resources", stats.resources_ms, 1.0))  # fmt: skip


async def queuer(src: str, http_base: str, api_token: str, agents: list[Agent], rate: float,
                 stats: Stats) -> None:  # fmt: skip
    """POST /api/v1/resources/<mac>/run at ``rate`` per second, never two at once per agent."""
    auth = {"Authorization": f"Bearer {api_token}", "Content-Type": "application/json"}
    body = json.dumps({"command": "true"}).encode()
    while True:
        await asyncio.sleep(random.expovariate(rate))
        agent = random.choice(agents)
        t0 = time.monotonic()
        try:
            status, out = await http("POST", f"{http_base}/api/v1/resources/{agent.mac}/run",
                                     src, auth, body, timeout=10)  # fmt: skip
        except HttpError as exc:
            stats.error(f"queue {exc}")
            continue
        if status == 202:
            stats.queued[json.loads(out)["id"]] = t0
        else:
            stats.error(f"queue HTTP {status}: {out[:80]!r}")
            stats.status5xx += status >= 500


async def lag_monitor(stats: Stats, every: float = 0.1) -> None:
    """How late this process's own event loop runs: a late loop inflates every latency."""
    while True:
        t0 = time.monotonic()
        await asyncio.sleep(every)
        stats.lag_ms.append((time.monotonic() - t0 - every) * 1000)


# --- the run -------------------------------------------------------------------------------
def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, int(len(v) * p / 100))], 1)


async def main(args: argparse.Namespace) -> dict:
    http_base = f"http://{args.server}:{args.http_port}"
    stats = Stats()
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(Relay, local_addr=(args.relay, 67))
    dhcp = Dhcp(args.relay, args.server, proto, transport)
    agents = [Agent(mac=bench_mac(args.seed, i)) for i in range(args.agents)]
    for a in agents:
        a.hostkey = hostkey_line()
    # the instrument's own collector pauses are not the daemon's latency (the daemon
    # does the same: provisiond.priority.settle_gc)
    gc.collect()
    gc.freeze()
    gc.set_threshold(7_000, 10, 100)

    addrs = Addresses()

    # 1. boot storm: every machine gets a lease, fetches its script and registers, all
    #    starting within --storm-window seconds
    t_storm = time.monotonic()
    running: list[asyncio.Task] = []

    async def boot(a: Agent) -> None:
        await asyncio.sleep(random.random() * args.storm_window)
        for n in range(6):
            try:
                await obtain_token(dhcp, addrs, a, http_base, stats)
                break
            except HttpError as exc:
                stats.error(f"boot {exc}")
                # a failed boot is retried as a machine does: it reboots, and a new
                # DHCP exchange starts a new boot (the token of the last one was
                # issued once, perhaps to a request that timed out)
                a.ip = ""
                await asyncio.sleep(min(2**n, 30))
        else:
            raise HttpError(f"{a.mac}: no boot script after 6 tries")
        await register(a, stats)
        # a registered agent heartbeats and polls at once, as the sh agent does
        running.append(asyncio.create_task(heartbeats(a, stats)))
        running.append(asyncio.create_task(polls(a, stats, args.wait)))

    booting = [asyncio.create_task(boot(a)) for a in agents]
    while not all(t.done() for t in booting) and time.monotonic() - t_storm < args.storm_limit:
        await asyncio.sleep(1)
        leased = sum(1 for a in agents if a.ip)
        print(f"storm {time.monotonic() - t_storm:5.1f} s: {leased} leased, "
              f"{sum(1 for a in agents if a.token)} booted, {len(stats.registered_at)} "
              f"registered, errors {stats.errors}", flush=True)  # fmt: skip
    for t in booting:
        t.cancel()
    booted = await asyncio.gather(*booting, return_exceptions=True)
    storm = {"window_s": args.storm_window,
             "all_registered_s": round(max(stats.registered_at, default=t_storm) - t_storm, 2),
             "registered": len(stats.registered_at),
             "failed": sum(isinstance(b, BaseException) for b in booted),
             "status5xx": stats.status5xx}  # fmt: skip
    agents = [a for a in agents if a.token]
    storm_errors = dict(stats.errors)
    stats.errors.clear()
    stats.status5xx = 0

    # 2. steady state for --duration seconds (what the storm measured is reset)
    stats.heartbeat_ms.clear()
    stats.polls = 0
    tasks = running
    tasks.append(asyncio.create_task(lag_monitor(stats)))
    tasks.append(asyncio.create_task(probes(args.probe_src, http_base, args.api_token, stats)))
    if args.commands_per_s > 0:
        tasks.append(asyncio.create_task(queuer(args.probe_src, http_base, args.api_token,
                                                agents, args.commands_per_s, stats)))  # fmt: skip
    t_run = time.monotonic()
    Path(args.ready).touch() if args.ready else None
    await asyncio.sleep(args.duration)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    transport.close()
    # commands queued in the last (wait + 5) s may still be in flight: judge the rest
    cutoff = t_run + args.duration - 5
    judged = {j: t for j, t in stats.queued.items() if t < cutoff}
    lat = [(stats.started[j] - t) * 1000 for j, t in judged.items() if j in stats.started]
    return {
        "agents": args.agents, "duration_s": args.duration, "wait_s": args.wait,
        "storm": storm, "storm_errors": storm_errors,
        "heartbeats": len(stats.heartbeat_ms),
        "heartbeat_p50_ms": pct(stats.heartbeat_ms, 50),
        "heartbeat_p99_ms": pct(stats.heartbeat_ms, 99),
        "commands_queued": len(judged), "commands_delivered": len(lat),
        "command_p50_ms": pct(lat, 50), "command_p99_ms": pct(lat, 99),
        "results_ok": stats.results_ok, "polls": stats.polls,
        "healthz_p99_ms": pct(stats.healthz_ms, 99), "healthz_n": len(stats.healthz_ms),
        "resources_p95_ms": pct(stats.resources_ms, 95), "resources_n": len(stats.resources_ms),
        "status5xx": stats.status5xx, "errors": stats.errors,
        "load_lag_p50_ms": pct(stats.lag_ms, 50), "load_lag_p99_ms": pct(stats.lag_ms, 99),
        "load_lag_max_ms": round(max(stats.lag_ms, default=0), 1),
    }  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--server", required=True, help="the daemon's address")
    ap.add_argument("--http-port", type=int, default=8080)
    ap.add_argument("--relay", required=True, help="this namespace's relay address (giaddr)")
    ap.add_argument("--probe-src", required=True, help="address for API probes and the queuer")
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--duration", type=float, default=60, help="steady state, seconds")
    ap.add_argument("--wait", type=int, default=30, help="long poll ?wait=")
    ap.add_argument("--commands-per-s", type=float, default=2.0)
    ap.add_argument("--storm-window", type=float, default=STORM_WINDOW)
    ap.add_argument("--storm-limit", type=float, default=300, help="give up the storm after")
    ap.add_argument("--api-token", required=True)
    ap.add_argument("--seed", type=int, default=1, help="third MAC octet: distinct runs")
    ap.add_argument("--ready", default="", help="touch this file when steady state begins")
    ap.add_argument("--nice", type=int, default=0, help="run at this nice increment (root)")
    ap.add_argument("--out", required=True)
    return ap.parse_args(argv)


if __name__ == "__main__":
    a = parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 1 << 16)), hard))
    if a.nice:
        os.nice(a.nice)  # the measuring instrument: its own scheduling delay is not the daemon's
    result = asyncio.run(main(a))
    Path(a.out).write_text(json.dumps(result, indent=1))
