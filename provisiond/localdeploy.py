"""The ``local`` deployer: the idle agent streams an image onto a local disk.

Owns the two jobs of a ``local`` appliance, the server side of the streams
the agent reads (manifest, framed chunks, progress). Running an agent
command as part of a daemon job is :mod:`provisiond.agentjob` (shared with
capture, erase and template installs).

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

from provisiond import appliances, chunks, logs, powerctl, resources
from provisiond.agentjob import (
    DEFAULT_TIMEOUT,
    Gone,
    JobScope,
    appliance_of,
    cancel_command,
    encode_arg,
    job_log,
    open_command,
    start_command,
    wait_command,
)
from provisiond.context import Context
from provisiond.db import Database
from provisiond.errors import Invalid, NotFound
from provisiond.jobrunner import JobFailed
from provisiond.lifecycle import JobState as JS
from provisiond.model import Image, Job

log = logs.get("local")
SLICE = 256 * 1024  # bytes handed to the WSGI server at once (stays in its memory buffer)


def default_disk(inventory: dict) -> str:
    disks = [d.get("name") for d in (inventory or {}).get("disks", []) or [] if d.get("name")]
    return f"/dev/{disks[0]}" if disks else "/dev/sda"


# --- manifests ---------------------------------------------------------------


def _compressor():
    try:
        import zstandard
    except ImportError:  # pragma: no cover - zstandard is a dependency
        return None
    return zstandard.ZstdCompressor(level=1).compress


def ensure_manifest(db: Database, image_id: int, job_id: int | None = None) -> chunks.Manifest:
    """The image's cached manifest, computed (one read of the volume) when missing."""
    with db.reader() as s:
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
    with db.transaction() as s:
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


# --- server side of the agent's streams (called by web/stream.py) -------------


def deploy_source(db: Database, resource_id: int, cmd_id: int) -> tuple[str, chunks.Manifest]:
    with db.reader() as s:
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
    with db.transaction() as s:
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
        db, scope = self.ctx.db, JobScope(self.ctx, job_id)
        with db.reader() as s:
            app = scope.appliance(s)
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
        with db.transaction() as s:
            job = scope.job(s)
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
            scope.log(
                powerctl.boot_or_advise(
                    self.ctx.config, db, res_id, "start its agent", "localdeploy"
                ),
            )
        scope.log(
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
        scope.log(f"agent: {last}")
        with db.transaction() as s:
            job = scope.job(s)
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
        with self.ctx.db.transaction() as s:
            appliances.stopped(s, appliance_of(s, job_id),
                               "local disk left as it is")  # fmt: skip
        self.ctx.inventory.refresh()
        return "stopped: the disk keeps its contents; power-cycle the machine into PXE to reuse it"

    def fail(self, job_id: int, reason: str) -> None:
        appliances.fail_job(self.ctx.db, job_id, reason)
