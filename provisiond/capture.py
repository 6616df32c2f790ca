"""Image capture: the agent reads a local disk and uploads it as a new image.

Owns :func:`capture` (the service function behind ``provisiond image capture
<resource> --disk /dev/sda --name N`` and the API), the ``image.capture`` job
handler and :func:`store_chunk`, the server side of each uploaded chunk.

Flow: a sparse volume of the disk's size (from the agent's inventory) is
created on a storage; the agent command ``capture`` reads the disk chunk by
chunk (:mod:`provisiond.chunks` format, 4 MiB), skips zero chunks, and PUTs
every other chunk (zstd when that helps) with its sha256 to
``/agent/v1/stream/<cmd>/chunk/<index>``; the server decompresses, checks
length and sha256 (422 otherwise: the agent retries that chunk) and writes it
at its offset. At the end the agent reports ``chunks=K list=<sha256 of its
"index sha256" lines>``; the server scans the new volume once, builds the
manifest and compares the same digest, so a chunk lost or written twice
wrongly fails the job. Then the Image (with its manifest) exists.

Transports (job param ``transport``):

``tcp`` (default)
    the server opens a port for this capture (:mod:`provisiond.capturerx`;
    the resource's address and its bearer token only); each of ``workers``
    agent workers sends its share of the chunks as back-to-back frames over
    one ``nc`` connection. The agent reads only the chunks its *plan* lists:
    for every partition whose file system partclone knows, the blocks in use
    (``partclone.<fs> -D``, a ddrescue domain map), everything else whole
    (zero chunks skipped by their sha256). Chunks outside the plan are zero in
    the image. The server verifies every chunk on arrival, builds the
    manifest as chunks arrive, and fsyncs once at the end. The image is
    ``ready`` then; its whole-image sha256 (zero runs included) is computed
    afterwards in the background (:mod:`provisiond.imagedigest`), off the
    capture's critical path.
``http``
    the original path: one ``PUT .../chunk/<index>`` per chunk, every chunk
    of the disk read, a scan of the volume at the end.

Consistency: the disk is read while the machine runs the agent (nothing has
the disk mounted), which gives a consistent image. Capturing a disk that
something is writing to at the same time is *not* consistent (chunks are
read at different moments) — that is documented, not prevented.
"""

from __future__ import annotations

import hashlib
import os
import time

from provisiond import agentchannel, capturerx, chunks, events, imagedigest, images
from provisiond.agentjob import (
    DEFAULT_TIMEOUT,
    JobScope,
    cancel_command,
    encode_arg,
    open_command,
    start_command,
    wait_command,
)
from provisiond.context import Context
from provisiond.db import Database
from provisiond.errors import Conflict, Invalid
from provisiond.hardware import InventoryView
from provisiond.jobrunner import JobFailed
from provisiond.lifecycle import JobState as JS
from provisiond.model import Job, Resource
from provisiond.resources import AGENT_STATES
from provisiond.storages import StorageManager
from storage import remotewrite
from storage.backends import StorageError


class ChecksumError(Invalid):
    status = 422


def disk_size(inventory: dict, disk: str) -> int | None:
    found = InventoryView.of(inventory).disk(disk)
    return found.size_bytes if found else None


TRANSPORTS = ("tcp", "http")
DEFAULT_WORKERS = 3


def capture(
    session,
    res: Resource,
    disk: str,
    name: str,
    storage: str | None = None,
    actor: str = "cli",
    transport: str = "tcp",
    workers: int = DEFAULT_WORKERS,
) -> Job:
    """Queue an ``image.capture`` job (the daemon's job runner does the work)."""
    images.check_name(session, name)
    if res.state not in AGENT_STATES or not res.agent_token_hash:
        raise Conflict(f"resource {res.display_name} is {res.state} and runs no agent")
    if not disk.startswith("/dev/") or disk_size(res.inventory, disk) is None:
        known = InventoryView.of(res.inventory).disk_paths
        raise Invalid(
            f"disk {disk!r}: not in the inventory of {res.display_name} "
            f"(known: {', '.join(known) or 'none'})",
            field="disk",
        )
    if transport not in TRANSPORTS:
        raise Invalid(f"transport {transport!r}: use {' or '.join(TRANSPORTS)}", field="transport")
    if not 1 <= int(workers) <= 16:
        raise Invalid(f"workers {workers}: 1..16", field="workers")
    job = Job(
        kind="image.capture",
        state=JS.QUEUED,
        resource_id=res.id,
        params={
            "disk": disk,
            "name": name,
            "storage": storage,
            "transport": transport,
            "workers": int(workers),
        },
    )
    session.add(job)
    session.flush()
    events.record(session, actor, "image.capture", name, f"{res.display_name}:{disk}")
    return job


def list_digest(m: chunks.Manifest) -> str:
    return hashlib.sha256("".join(f"{c.index} {c.sha256}\n" for c in m.chunks).encode()).hexdigest()


def store_chunk(
    db: Database, resource_id: int, cmd_id: int, index: int, digest: str, enc: str, body: bytes
) -> None:
    with db.reader() as s:
        cmd = open_command(s, resource_id, cmd_id, "capture")
        path, size = cmd.params["path"], int(cmd.params["size"])
    try:
        length = chunks.chunk_length(size, chunks.CHUNK_SIZE, index)
    except chunks.ManifestError as exc:
        raise Invalid(str(exc), field="index")
    if enc == chunks.ZSTD:
        import zstandard

        try:
            body = zstandard.ZstdDecompressor().decompress(body, max_output_size=length)
        except zstandard.ZstdError as exc:
            raise ChecksumError(f"chunk {index}: zstd: {exc}")
    if len(body) != length or chunks.sha256(body) != digest:
        raise ChecksumError(f"chunk {index}: length or sha256 does not match")
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, body, index * chunks.CHUNK_SIZE)
        os.fsync(fd)
    finally:
        os.close(fd)


class CaptureJob:
    def __init__(self, ctx: Context, manager: StorageManager) -> None:
        self.ctx, self.manager = ctx, manager
        #: gives captured images their whole sha256 after the job (``sweep()`` at start)
        self.backfill = imagedigest.Backfill(ctx.db, self._hasher_for)

    def _hasher_for(self, image_id: int):
        """None (read the volume here) or a storage host's ``sha256sum``."""
        from provisiond.model import Image

        with self.ctx.db.reader() as s:
            img = s.get(Image, image_id)
            storage = img.volume.storage.name if img and img.volume else None
        remote = self.manager.runner_for(storage) if storage else None
        return imagedigest.remote_hasher(remote) if getattr(remote, "remote", False) else None

    def run(self, job_id: int) -> str:
        db, scope = self.ctx.db, JobScope(self.ctx, job_id)
        with db.reader() as s:
            p, res = dict(scope.job(s).params), scope.resource(s)
            size, res_id, res_name = disk_size(res.inventory, p["disk"]), res.id, res.display_name
            res_ip = res.ip
        settings = self.manager.settings(p.get("storage"))
        backend = self.manager.backend(settings.name)
        remote = self.manager.runner_for(settings.name)
        if getattr(remote, "remote", False) and p.get("transport", "http") != "tcp":
            raise JobFailed(
                f"storage {settings.name} is on a storage host: capture onto it needs the tcp "
                "transport (its chunks are verified on the host)"
            )
        vol_name = images.master_volume(p["name"])
        try:
            vol = backend.create(vol_name, size)
        except StorageError as exc:
            raise JobFailed(f"cannot create volume {vol_name}: {exc}")
        with db.transaction() as s:
            job = scope.job(s)
            job.params, job.bytes_total = {**p, "volume": vol_name}, size
        if p.get("transport", "http") == "tcp":
            sink = None
            if getattr(remote, "remote", False):  # a storage host: chunks checked and written there
                try:
                    sink = remotewrite.RemoteWriter(remote, vol.path)
                except StorageError as exc:
                    raise JobFailed(f"cannot write to {vol.path} on {settings.host}: {exc}")
            m, last = self._run_tcp(scope, p, res_id, res_ip, res_name, vol.path, size, sink)
        else:
            arg = encode_arg(disk=p["disk"], size=size, retries=5, timeout=30)
            cmd_id = start_command(
                self.ctx, job_id, res_id, "capture", arg, path=vol.path, size=size
            )
            scope.log(f"asked the agent of {res_name} to upload {p['disk']} ({size} bytes)")
            last = wait_command(self.ctx, job_id, cmd_id, DEFAULT_TIMEOUT)
            scope.log(f"agent: {last}")
            with open(vol.path, "rb") as fh:
                m = chunks.scan(fh, size)
        want = dict(kv.split("=", 1) for kv in last.split() if "=" in kv)
        if want.get("list") != list_digest(m) or int(want.get("chunks", -1)) != len(m.chunks):
            raise JobFailed(
                f"captured volume does not match what the agent read "
                f"({len(m.chunks)} chunks on the server, agent said {last!r})"
            )
        master = images.Master(p["name"], settings.name, vol_name, vol.path, size, m.sha256,
                               m.to_json())  # fmt: skip
        with db.transaction() as s:
            img = images.register(s, self.manager, job_id, master, "daemon", "image.captured",
                                  f"{res_name}:{p['disk']}")  # fmt: skip
            image_id = img.id
        if not m.sha256:  # tcp: every chunk was checked on arrival; the whole sha256 follows
            self.backfill.submit(image_id)
        whole = m.sha256 or "computed in the background"
        return f"image {p['name']}: {size} bytes, {len(m.chunks)} data chunks, sha256 {whole}"

    def _run_tcp(self, scope: JobScope, p, res_id, res_ip, res_name, path, size, sink=None):
        db, job_id = self.ctx.db, scope.job_id

        def auth(token: str) -> bool:
            caller = agentchannel.authenticate(db, f"Bearer {token}")
            return caller is not None and caller.resource_id == res_id

        rx = capturerx.Receiver(str(self.ctx.config.address), path, size, res_ip, auth,
                                sink=sink).start()  # fmt: skip
        try:
            workers = int(p.get("workers") or DEFAULT_WORKERS)
            arg = encode_arg(disk=p["disk"], size=size, retries=5, timeout=30, transport="tcp",
                             port=rx.port, workers=workers)  # fmt: skip
            cmd_id = start_command(self.ctx, job_id, res_id, "capture", arg, path=path, size=size)
            scope.log(f"asked the agent of {res_name} to send {p['disk']} "
                      f"({size} bytes, tcp port {rx.port}, {workers} streams)")  # fmt: skip
            t0 = time.monotonic()
            last = wait_command(self.ctx, job_id, cmd_id, DEFAULT_TIMEOUT)
            with db.reader() as s:
                said = (s.get(Job, cmd_id).log or "").splitlines()
            for line in said:  # the agent's plan: what it read of which partition, and why
                if line.startswith(("plan:", "partition ", "no partition", "read ")):
                    scope.log(f"agent: {line}")
            scope.log(f"agent: {last}")
            deadline = time.monotonic() + 10
            while rx.lanes_done() < workers and time.monotonic() < deadline:
                time.sleep(0.05)  # the agent's result can overtake a lane's last bytes
            try:
                m = rx.manifest()
            except capturerx.FrameError as exc:
                raise JobFailed(f"capture incomplete: {exc}; lane errors: {rx.errors[:3]}")
            try:
                rx.finish()
            except StorageError as exc:  # the storage host refused a chunk or the end
                raise JobFailed(f"capture onto {path} failed: {exc}")
            took = time.monotonic() - t0
            scope.log(f"received {len(m.chunks)} chunks ({rx.received_bytes} bytes) "
                      f"in {took:.1f} s; refused connections: {rx.refused}")  # fmt: skip
            return m, last
        finally:
            rx.stop()

    def fail(self, job_id: int, reason: str) -> None:
        cancel_command(self.ctx.db, job_id, reason)
        with self.ctx.db.reader() as s:
            p = dict(s.get(Job, job_id).params)
        if p.get("volume"):
            try:
                self.manager.backend(p.get("storage")).delete(p["volume"])
            except (StorageError, OSError):
                pass
