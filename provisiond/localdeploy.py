"""The ``local`` deployer: the idle agent streams an image onto a local disk.

Owns the two jobs of a ``local`` appliance, the server side of the streams
the agent reads (manifest, framed chunks, progress) and the helper that runs
an agent command as part of a daemon job (also used by capture and erase).

``appliance.start``
    1. make sure the image has a manifest (:mod:`provisiond.chunks`;
       computed once, cached in ``Image.manifest``);
    2. queue the agent command ``deploy`` (arg: ``key=value`` lines — disk,
       transport, workers, zeros, retries, timeout, port) and wait for its
       result. Transport ``http`` (default): the agent fetches the manifest
       and framed chunk streams from ``/agent/v1/stream/<cmd>/...``
       (web/stream.py), verifies each chunk's sha256, writes it at its offset
       (O_DIRECT when the disk allows it, else fsync), resumes a cut stream
       from the last verified chunk, then reads every written chunk back and
       verifies it. Transport ``nc``: the daemon opens a TCP port for this
       job only (the resource's address only, one connection) and sends the
       raw volume bytes, as ``nc SERVER PORT | dd of=DISK`` expects; the agent
       then compares one sha256 of the disk region with the manifest's.
    3. exit 0 → appliance and resource ``active``; the agent reboots and the
       boot policy answers "boot the local disk". Anything else (checksum
       mismatch, short disk, lost connection beyond retries, timeout) →
       ``failed`` with the agent's reason; never ``active``.

Zero chunks: with ``zeros=write`` (default) the agent zeroes what the image
leaves empty (a regular-file target is truncated, a block device gets
``dd`` from /dev/zero over the zero runs), so a used disk ends up equal to
the image; ``zeros=skip`` trusts a blank disk (faster; for new disks).
``appliance.stop`` forgets nothing on the disk: the machine keeps its OS;
the appliance is ``stopped`` and the resource ``releasing`` until the agent
runs again (power-cycle into PXE, or ``resource release``).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

from provisiond import appliances, chunks, jobs, logs, powerctl, resources
from provisiond.context import Context
from provisiond.db import Database
from provisiond.errors import Invalid, NotFound
from provisiond.jobrunner import JobFailed
from provisiond.lifecycle import JobState as JS
from provisiond.model import Appliance, Image, Job, Resource, utcnow

log = logs.get("local")
SLICE = 256 * 1024  # bytes handed to the WSGI server at once (stays in its memory buffer)
DEFAULT_TIMEOUT = 6 * 3600


def job_log(db: Database, job_id: int, line: str) -> None:
    log.info("job %d: %s", job_id, line)
    with db.session() as s:
        jobs.append_log(s.get(Job, job_id), line)


def default_disk(inventory: dict) -> str:
    disks = [d.get("name") for d in (inventory or {}).get("disks", []) or [] if d.get("name")]
    return f"/dev/{disks[0]}" if disks else "/dev/sda"


def encode_arg(**kv: object) -> str:
    return "".join(f"{k}={v}\n" for k, v in kv.items() if v is not None and v != "")


# --- manifests ---------------------------------------------------------------


def _compressor():
    try:
        import zstandard
    except ImportError:  # pragma: no cover - zstandard is a dependency
        return None
    return zstandard.ZstdCompressor(level=1).compress


def ensure_manifest(db: Database, image_id: int, job_id: int | None = None) -> chunks.Manifest:
    """The image's cached manifest, computed (one read of the volume) when missing."""
    with db.sessions() as s:
        img = s.get(Image, image_id)
        if img is None or img.volume is None:
            raise JobFailed("the image has no master volume")
        cached, path, size, name = img.manifest, img.volume.path, img.volume.size, img.name
    if cached:
        m = chunks.Manifest.from_json(cached)
        if m.size == size:
            return m
    t0 = time.monotonic()
    with open(path, "rb") as fh:
        m = chunks.scan(fh, size, compress=_compressor())
    with db.session() as s:
        img = s.get(Image, image_id)
        img.manifest = m.to_json()
        img.sha256 = img.sha256 or m.sha256
    if job_id is not None:
        job_log(
            db,
            job_id,
            f"manifest of {name}: {len(m.chunks)} of {m.count} chunks hold data "
            f"({m.data_bytes / 2**20:.0f} MiB), computed in {time.monotonic() - t0:.1f} s",
        )
    return m


# --- agent commands as part of a job ------------------------------------------


def start_command(ctx: Context, job_id: int, res_id: int, kind: str, arg: str, **params) -> int:
    with ctx.db.session() as s:
        res = s.get(Resource, res_id)
        cmd = jobs.enqueue_command(s, res, kind, arg=arg, actor="daemon")
        cmd.params = {**cmd.params, "parent": job_id, **params}
        cmd.owner = ctx.config.instance  # this instance waits for it (wait_command)
        parent = s.get(Job, job_id)
        parent.params = {**(parent.params or {}), "command": cmd.id}
        cmd_id = cmd.id
    ctx.ring()
    return cmd_id


def wait_command(ctx: Context, job_id: int, cmd_id: int, timeout: float) -> str:
    """Wait for the agent's result: its output's last line, or JobFailed with it."""
    deadline = time.monotonic() + timeout
    silent_limit = ctx.config.agent.heartbeat_timeout
    while time.monotonic() < deadline:
        with ctx.db.sessions() as s:
            cmd, parent = s.get(Job, cmd_id), s.get(Job, job_id)
            state, out = cmd.state, cmd.log
            parent_state = parent.state if parent else JS.FAILED
            res = s.get(Resource, cmd.resource_id) if cmd.resource_id else None
            beat = res.last_heartbeat if res else None
        last = next((ln for ln in reversed(out.splitlines()) if ln.strip()), "")
        silent = (utcnow() - beat).total_seconds() if beat else 0.0
        if state == JS.RUNNING and silent > silent_limit:
            raise JobFailed(
                f"the agent went silent for {silent:.0f} s during command {cmd_id} "
                "(machine down, rebooted or off the network?)"
            )
        if state == JS.SUCCEEDED:
            return last
        if state in (JS.FAILED, JS.CANCELLED):
            raise JobFailed(last or f"agent command {cmd_id} {state}")
        if parent_state != JS.RUNNING:
            raise JobFailed(f"job {job_id} is {parent_state}")
        time.sleep(0.3)
    raise JobFailed(
        f"the agent did not finish command {cmd_id} within {timeout:.0f} s "
        "(is it running? `provisiond resource show`)"
    )


def cancel_command(db: Database, job_id: int, reason: str) -> None:
    """Fail the agent command of ``job_id`` if still open: its streams then answer 410."""
    with db.session() as s:
        parent = s.get(Job, job_id)
        cmd_id = (parent.params or {}).get("command") if parent else None
        cmd = s.get(Job, cmd_id) if cmd_id else None
        if cmd is not None and cmd.state in (JS.QUEUED, JS.RUNNING):
            jobs.transition(cmd, JS.FAILED, reason)


# --- server side of the agent's streams (called by web/stream.py) -------------


def open_command(session, resource_id: int, cmd_id: int, kind: str) -> Job:
    cmd = session.get(Job, cmd_id)
    if cmd is None or cmd.resource_id != resource_id or cmd.kind != f"agent.{kind}":
        raise NotFound(f"no {kind} command {cmd_id} for this resource")
    if cmd.state != JS.RUNNING:
        raise Gone(f"command {cmd_id} is {cmd.state}")
    return cmd


class Gone(Invalid):
    status = 410


def deploy_source(db: Database, resource_id: int, cmd_id: int) -> tuple[str, chunks.Manifest]:
    with db.sessions() as s:
        cmd = open_command(s, resource_id, cmd_id, "deploy")
        img = s.get(Image, cmd.params.get("image_id"))
        if img is None or img.volume is None or not img.manifest:
            raise Gone("the image of this deploy is gone")
        return img.volume.path, chunks.Manifest.from_json(img.manifest)


def frames(path: str, m: chunks.Manifest, start: int, step: int) -> Iterator[bytes]:
    """The framed chunk stream: one worker's share, read from disk chunk by chunk."""
    compress = _compressor()
    sent = 0
    with open(path, "rb") as fh:
        for c in chunks.select(m, start, step):
            data = os.pread(fh.fileno(), m.length(c.index), c.index * m.chunk_size)
            data = data.ljust(m.length(c.index), b"\0")
            if c.enc == chunks.ZSTD and compress is not None:
                data, enc = compress(data), chunks.ZSTD
            else:
                enc = chunks.RAW
            yield chunks.frame_header(c.index, enc, len(data), c.sha256)
            for i in range(0, len(data), SLICE):
                yield data[i : i + SLICE]
            sent += 1
    yield chunks.end_frame(sent)


MAX_BYTES = 2**63 - 1  # the BIGINT columns' range


def report_progress(db: Database, resource_id: int, cmd_id: int, done: int, total: int) -> None:
    if not (-MAX_BYTES <= done <= MAX_BYTES and -MAX_BYTES <= total <= MAX_BYTES):
        raise Invalid(f"progress {done} {total} is out of range (bytes, below 2**63)", field="body")
    with db.session() as s:
        cmd = s.get(Job, cmd_id)
        if cmd is None or cmd.resource_id != resource_id:
            raise NotFound(f"no command {cmd_id} for this resource")
        parent = s.get(Job, cmd.params.get("parent")) if cmd.params.get("parent") else None
        for job in filter(None, (cmd, parent)):
            if job.state != JS.RUNNING:
                continue
            job.bytes_done, job.bytes_total = max(0, done), max(0, total)
            started = job.started_at or job.created_at
            elapsed = (resources.utcnow() - started).total_seconds() if started else 0
            job.rate = done / elapsed if elapsed > 0 else 0.0


# --- the raw dd | nc transport ------------------------------------------------


class RawSender:
    """One TCP connection, from ``peer_ip`` only, gets ``size`` raw bytes of ``path``."""

    def __init__(self, host: str, path: str, size: int, peer_ip: str | None, timeout=600.0):
        self.path, self.size, self.peer_ip, self.timeout = path, size, peer_ip, timeout
        self.sock = socket.create_server((host, 0))
        self.sock.settimeout(2.0)
        self.port = self.sock.getsockname()[1]
        self.sent, self.error = 0, ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raw-send", daemon=True)

    def start(self) -> RawSender:
        self._thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    conn, (ip, _port) = self.sock.accept()
                except TimeoutError:
                    continue
                if self.peer_ip and ip != self.peer_ip:
                    log.warning("raw transport: refused a connection from %s", ip)
                    conn.close()
                    continue
                with conn, open(self.path, "rb") as fh:
                    self.sent = conn.sendfile(fh, 0, self.size) or 0
                return
        except OSError as exc:
            self.error = str(exc)
        finally:
            self.sock.close()

    def stop(self) -> None:
        self._stop.set()


# --- the handlers -------------------------------------------------------------


class LocalStart:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def run(self, job_id: int) -> str:
        db = self.ctx.db
        with db.sessions() as s:
            app = s.get(Appliance, s.get(Job, job_id).appliance_id)
            if app.image is None or app.image.volume is None:
                raise JobFailed(f"appliance {app.name}: its image has no master volume")
            image_id, path, image_name = app.image.id, app.image.volume.path, app.image.name
            res_id, res_ip, res_name = app.resource_id, app.resource.ip, app.resource.display_name
            params = dict(app.params or {})
            disk = params.get("disk") or default_disk(app.resource.inventory)
            wake = app.resource.power_driver and not powerctl.agent_heard(
                self.ctx.config, app.resource
            )
        m = ensure_manifest(db, image_id, job_id)
        with db.session() as s:
            job = s.get(Job, job_id)
            job.bytes_total, job.image_id = m.data_bytes, image_id
        transport = params.get("transport", "http")
        if transport not in ("http", "nc"):
            raise JobFailed(f"transport {transport!r}: use http or nc")
        sender = None
        if transport == "nc":
            sender = RawSender(str(self.ctx.config.address), path, m.size, res_ip).start()
        arg = encode_arg(
            disk=disk,
            transport=transport,
            size=m.size,
            sha256=m.sha256,
            port=sender and sender.port,
            workers=params.get("workers", 4),
            zeros=params.get("zeros", "write"),
            retries=params.get("retries", 5),
            timeout=params.get("chunk_timeout", 30),
        )
        cmd_id = start_command(self.ctx, job_id, res_id, "deploy", arg, image_id=image_id)
        if wake:  # a machine that is off: its agent runs the command once it boots
            job_log(
                db,
                job_id,
                powerctl.boot_or_advise(
                    self.ctx.config, db, res_id, "start its agent", "localdeploy"
                ),
            )
        job_log(
            db,
            job_id,
            f"asked the agent of {res_name} to write {image_name} to {disk} "
            f"({transport}, command {cmd_id})",
        )
        try:
            last = wait_command(
                self.ctx, job_id, cmd_id, float(params.get("timeout", DEFAULT_TIMEOUT))
            )
        finally:
            if sender:
                sender.stop()
        job_log(db, job_id, f"agent: {last}")
        with db.session() as s:
            job = s.get(Job, job_id)
            job.bytes_done = job.bytes_total
            if not appliances.booted(s, res_id, "image written and verified by the agent"):
                raise JobFailed("the appliance left 'starting' while its disk was written")
        self.ctx.inventory.refresh()
        return (
            f"active: {image_name} written to {disk} of {res_name} and verified; booting from disk"
        )

    def fail(self, job_id: int, reason: str) -> None:
        cancel_command(self.ctx.db, job_id, reason)
        appliances.fail_job(self.ctx.db, job_id, reason)
        self.ctx.inventory.refresh()


class LocalStop:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def run(self, job_id: int) -> str:
        with self.ctx.db.session() as s:
            appliances.stopped(s, s.get(Appliance, s.get(Job, job_id).appliance_id),
                               "local disk left as it is")  # fmt: skip
        self.ctx.inventory.refresh()
        return "stopped: the disk keeps its contents; power-cycle the machine into PXE to reuse it"

    def fail(self, job_id: int, reason: str) -> None:
        appliances.fail_job(self.ctx.db, job_id, reason)
