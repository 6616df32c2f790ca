"""The agent channel server: ``/agent/v1`` control calls on an asyncio event loop.

Owns listening on ``address:agent_port`` (announced to agents on the kernel
command line as ``provisiond.agent=``), the event loop thread it runs in,
the bounded thread pool for database work, the long-poll waiters and the
liveness flusher. Views are :mod:`web.agent`; rules are
:mod:`provisiond.agentchannel`.

Why this shape (measured on the 2-core test machine, bench/agents, figures
in BENCHMARKS.md):

* Before, each ``GET /agent/v1/commands?wait=25`` held one of waitress's 48
  threads and wrote ``last_heartbeat`` every 0.5 s: ~50 agents saturated the
  daemon; with 100 agents no heartbeat succeeded in 120 s (bench/agents,
  loaded machine). Here a waiting poll is one :class:`asyncio.Event` and a
  socket — no thread, no database work while it waits: 2,000 agents held
  10 minutes with 0 wrongly offline, 0 5xx, every command delivered, 177 MiB
  RSS, 33 % of one core (tails in BENCHMARKS.md).
* Heartbeats and polls touch :class:`provisiond.liveness.Liveness` in memory;
  one transaction a second writes all changed rows (2,000 agents: one
  ``executemany`` of ~200 rows instead of ~4,200 transactions a second).
* A poll wakes when the queue may hold something for it: ``ctx.ring()``
  (any thread) schedules one sweep, and a sweep every ``SWEEP_S`` catches
  commands queued by other processes (CLI). A sweep is *one* query for all
  resources with a queued agent command; only their waiters wake and take
  the command in their own short transaction.
* Token lookups are cached (:mod:`provisiond.tokencache`, emptied by every
  commit that writes resource rows, here or in another process): a
  heartbeat is answered on the event loop without a thread hand-off.
* A poll reads the database only when the last sweep saw a queued command
  for its resource (:attr:`AgentChannel.pending`); otherwise it waits, and
  the next sweep (one query for all resources, at once on a ring, else
  within ``SWEEP_S``) wakes it. In a py-spy profile of 2,000 agents the
  per-poll ``has_command`` read was 589 of ~1,400 samples of the database
  pool's threads; now a steady state of idle agents costs one read a second.
* Any authenticated call is a sign of life (the middleware touches
  liveness before the view runs), so a registration queued behind a boot
  storm's writes does not let its machine go offline.
* On a busy machine the loop's own enemies were the CPU scheduler and the
  garbage collector, not the work: with 2,000 agents the daemon used
  12-20 % of one core while the loop was up to 1.5-3 s late, and the log's
  figures (``watch``: loop lateness, longest GC pause) showed full GC
  collections of 1-2.3 s, 6-12 a minute. :mod:`provisiond.priority` gives
  the request threads nice -10 and settles the collector after start-up
  (frozen start-up objects, rare full collections): at load average 21 the
  loop was then at most 0.35 s late and heartbeat p99 212 ms (522 agents
  held; BENCHMARKS.md has the 2,000-agent runs).
* Database work that remains (register, command fetch, result) runs in a
  pool of ``workers`` threads, so a slow disk queues work instead of growing
  threads; token lookups (reads, every request) have their own small pool
  so heartbeats never wait behind writers. A poll that finds nothing costs
  one read, not a write transaction.
* A second port rather than a front door on the HTTP port: local deploys
  stream image chunks through waitress at disk speed (bench/stream), and
  proxying those through an asyncio front door would cost that throughput.
  The chunk stream routes stay on the HTTP port (``provisiond.url=``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import resource
import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from provisiond import agentchannel, logs, priority
from provisiond.context import Context

log = logs.get("agentd")
FLUSH_S = 1.0  # group commit of heartbeats
SWEEP_S = 1.0  # catch commands queued by other processes
MAX_WAIT = 30.0
REPORT_S = 60.0  # the channel's own figures, in the log


class GcPauses:
    """The longest garbage-collector pause since the last :meth:`take` (``gc.callbacks``)."""

    def __init__(self) -> None:
        self._t0 = 0.0
        self.worst = 0.0
        self.full = 0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.worst = max(self.worst, time.perf_counter() - self._t0)
            self.full += info.get("generation") == 2

    def take(self) -> tuple[float, int]:
        out = self.worst, self.full
        self.worst, self.full = 0.0, 0
        return out


class Waiters:
    """Long polls in progress, per resource; lives on the event loop (not thread-safe)."""

    def __init__(self) -> None:
        self._by_resource: dict[int, set[asyncio.Event]] = {}

    def add(self, resource_id: int) -> asyncio.Event:
        ev = asyncio.Event()
        self._by_resource.setdefault(resource_id, set()).add(ev)
        return ev

    def remove(self, resource_id: int, ev: asyncio.Event) -> None:
        evs = self._by_resource.get(resource_id)
        if evs is not None:
            evs.discard(ev)
            if not evs:
                del self._by_resource[resource_id]

    def ids(self) -> set[int]:
        return set(self._by_resource)

    def wake(self, resource_ids: set[int]) -> None:
        for rid in resource_ids:
            for ev in self._by_resource.get(rid, ()):
                ev.set()

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_resource.values())


class AgentChannel:
    """What the views use: the context, the thread pool and the waiters."""

    def __init__(self, ctx: Context, workers: int) -> None:
        self.ctx = ctx
        self.waiters = Waiters()
        self.pool = concurrent.futures.ThreadPoolExecutor(
            workers, thread_name_prefix="agentdb",
            initializer=priority.favour, initargs=("agent database pool",),
        )  # fmt: skip
        # token lookups (every request, reads only) never queue behind writers
        self.auth_pool = concurrent.futures.ThreadPoolExecutor(
            max(2, workers // 2), thread_name_prefix="agentauth",
            initializer=priority.favour, initargs=("agent token pool",),
        )  # fmt: skip
        self.kick = asyncio.Event()
        # resources with a queued agent command as of the last sweep: a poll of any
        # other resource waits without a database read (the next sweep wakes it)
        self.pending: set[int] = set()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the database pool."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def authenticate(self, authorization: str) -> agentchannel.Caller | None:
        """Answered from ``ctx.tokens`` when it can be (no thread hand-off), else a read."""
        digest = agentchannel.token_digest(authorization)
        if digest is None:
            return None
        tokens = self.ctx.tokens
        caller = tokens.get(digest)
        if caller is not None:
            return caller
        generation = tokens.generation
        loop = asyncio.get_running_loop()
        caller = await loop.run_in_executor(
            self.auth_pool, agentchannel.lookup, self.ctx.db, digest
        )
        if caller is not None:
            tokens.put(digest, caller, generation)
        return caller

    async def wait_command(self, resource_id: int, wait: float) -> str | None:
        """The next command for ``resource_id`` within ``wait`` seconds, or None."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(wait, 0.0), MAX_WAIT)
        ev = self.waiters.add(resource_id)
        self.ctx.liveness.touch(resource_id)
        try:
            while True:
                ev.clear()  # registered before the check: a wake after it is not lost
                text = None
                if resource_id in self.pending:  # else a sweep will find it and wake us
                    text = await self.run(agentchannel.next_command, self.ctx, resource_id)
                remaining = deadline - loop.time()
                if text is not None or remaining <= 0:
                    return text
                try:
                    await asyncio.wait_for(ev.wait(), remaining)
                except TimeoutError:
                    return None
        finally:
            self.waiters.remove(resource_id, ev)
            self.ctx.liveness.touch(resource_id)

    async def sweeper(self) -> None:
        """Wake the polls of resources that have a queued command."""
        while True:
            try:
                await asyncio.wait_for(self.kick.wait(), SWEEP_S)
                rung = True
            except TimeoutError:
                rung = False
            self.kick.clear()
            if not rung and not self.waiters.ids():
                continue
            try:
                ids = await self.run(agentchannel.resources_with_commands, self.ctx.db)
            except Exception:
                log.exception("command sweep failed (retrying)")
                await asyncio.sleep(SWEEP_S)
                continue
            self.pending = ids
            self.waiters.wake(ids)

    async def watch(self, every: float = 0.5) -> None:
        """Every ``REPORT_S`` in the log: waiting polls, token cache use, the loop's worst
        lateness and the longest garbage-collector pause (which stops every thread)."""
        loop = asyncio.get_running_loop()
        tokens, pauses = self.ctx.tokens, GcPauses()
        worst, since, calls = 0.0, loop.time(), (tokens.hits, tokens.misses)
        gc.callbacks.append(pauses)
        try:
            while True:
                t0 = loop.time()
                await asyncio.sleep(every)
                worst = max(worst, loop.time() - t0 - every)
                if loop.time() - since < REPORT_S:
                    continue
                gc_worst, gc_full = pauses.take()
                hits, misses = tokens.hits - calls[0], tokens.misses - calls[1]
                if len(self.waiters) or hits or misses:
                    log.info(
                        "agent channel: %d polls waiting; token cache %d hits, %d misses; "
                        "event loop at most %.0f ms late; longest GC pause %.0f ms (%d full)",
                        len(self.waiters), hits, misses, worst * 1000, gc_worst * 1000, gc_full,
                    )  # fmt: skip
                worst, since, calls = 0.0, loop.time(), (tokens.hits, tokens.misses)
        finally:
            gc.callbacks.remove(pauses)

    async def flusher(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await self.run(self.ctx.liveness.flush, self.ctx.db)
            except Exception:
                log.exception("heartbeat group commit failed (kept for the next one)")


def _raise_fd_limit(want: int = 65536) -> None:
    """Each waiting agent is a socket: lift the soft limit on open files (often 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        log.info("open-file limit raised from %d to %d for the agent channel", soft, target)


class AgentServer:
    """Service: the agent channel on ``host:port`` in its own thread and event loop."""

    name = "agent"

    def __init__(
        self,
        ctx: Context,
        make_app: Callable[[AgentChannel], web.Application],
        host: str,
        port: int,
        workers: int = 8,
    ) -> None:
        self._ctx, self._make_app, self._host, self._port = ctx, make_app, host, port
        self._workers = workers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._undo_ring: Callable[[], None] | None = None
        self.channel: AgentChannel | None = None

    def start(self) -> None:
        _raise_fd_limit()
        started: concurrent.futures.Future = concurrent.futures.Future()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="agentd", daemon=True
        )
        self._thread.start()
        try:
            started.result(timeout=30)
        except OSError as exc:
            self._thread.join(5)
            raise RuntimeError(
                f"agent: cannot listen on {self._host}:{self._port} ({exc.strerror}); "
                "change agent_port or address in the config, or stop what uses the port"
            )
        log.info("agent channel on http://%s:%d", self._host, self._port)

    def _run(self, started: concurrent.futures.Future) -> None:
        priority.favour("agent channel")
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main(started))
        except Exception as exc:
            if not started.done():
                started.set_exception(exc)
            else:  # pragma: no cover - the loop itself failed after start
                log.exception("agent channel stopped unexpectedly")
        finally:
            self._loop.close()

    async def _main(self, started: concurrent.futures.Future) -> None:
        channel = AgentChannel(self._ctx, self._workers)
        self.channel = channel
        self._stopped = asyncio.Event()
        runner = web.AppRunner(self._make_app(channel), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, backlog=4096, reuse_address=True)
            await site.start()
        except Exception:
            await runner.cleanup()
            channel.pool.shutdown(wait=False)
            channel.auth_pool.shutdown(wait=False)
            raise
        loop = asyncio.get_running_loop()
        self._undo_ring = self._ctx.on_ring(lambda: loop.call_soon_threadsafe(channel.kick.set))
        tasks = [asyncio.create_task(channel.sweeper()), asyncio.create_task(channel.flusher()),
                 asyncio.create_task(channel.watch())]  # fmt: skip
        started.set_result(None)
        await self._stopped.wait()
        self._undo_ring()
        for t in tasks:
            t.cancel()
        await runner.shutdown()
        await runner.cleanup()
        await loop.run_in_executor(channel.pool, self._final_flush)
        channel.pool.shutdown(wait=False, cancel_futures=True)
        channel.auth_pool.shutdown(wait=False, cancel_futures=True)

    def _final_flush(self) -> None:
        try:
            self._ctx.liveness.flush(self._ctx.db)
        except Exception:
            log.exception("last heartbeat group commit failed")

    def stop(self) -> None:
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            return
        if self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(4)
