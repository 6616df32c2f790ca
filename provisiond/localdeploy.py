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
    3. exit 0 → the appliance's ``written`` param is set, so the boot policy
       answers "boot the local disk" when the agent reboots the machine.
       Anything else (checksum mismatch, short disk, lost connection beyond
       retries, timeout) → ``failed`` with the agent's reason; never ``active``.
    4. watch the boot (``[local] confirm_boot``, on by default; off: ``active``
       at step 3, for machines whose OS provisiond can neither hear nor reach):
       the appliance stays ``starting`` until the booted OS shows it is up,
       decided by :func:`provisiond.bootchain.judge_disk`:

       * **report-in** (an image built for provisiond): the image reserves a
         report-in slot (:mod:`provisiond.reportslot`), the daemon mints a
         one-time token (only its hash is kept, in the job's params, as a
         template install does), the agent fetches this deploy's record over
         its authenticated stream API and writes it into the slot after the
         verification, and the booted OS calls ``POST /install/v1/done``
         with it: :func:`provisiond.templatedeploy.report_in`, one code path
         for both modes. Only this proves the boot for such an image: the
         token went to that machine's disk only, over the agent's channel.
       * **the booted OS's DHCP request** (any other image: nothing is needed
         in it): after the local-boot script was served to that MAC, the
         daemon's DHCP service (full or proxy; it hears the broadcast either
         way) sees a request from that MAC of a client that is not a PXE
         ROM, iPXE or UEFI HTTP (:class:`provisiond.bootchain.OsDhcp`). It
         shows a kernel and its network came up from the disk; it is not
         authenticated (anyone on the segment can send it with that MAC), so
         it is taken only where no report-in can come — the same trade as
         Ironic's and Foreman's "the machine rebooted" for images without an
         agent, but with a sign of life from the disk's OS.
       * neither within ``local.boot_timeout`` s, or ``local.max_script_fetches``
         fetches of the local-boot script (iPXE retries it when the disk does
         not boot: a boot loop) → ``failed`` with what was written and what
         was seen (e.g. "wrote and verified golden on /dev/vda of dep2; no
         report-in and no DHCP request from the booted OS within 600 s; the
         machine fetched its local-boot script 1 time since"). A retry
         (``appliance start``) after the fault is fixed runs the whole chain
         again.

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
from pathlib import Path

from provisiond import appliances, bootchain, chunks, logs, powerctl, reportslot, resources
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
from provisiond.fanout import FanoutHub
from provisiond.hardware import default_disk
from provisiond.jobrunner import JobFailed
from provisiond.lifecycle import ApplianceState as AS
from provisiond.lifecycle import JobState as JS
from provisiond.model import Image, Job
from provisiond.security import hash_token, new_token, write_private

log = logs.get("local")
SLICE = 256 * 1024  # bytes handed to the WSGI server at once (stays in its memory buffer)


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


def _with_whole_sha256(db: Database, image_id: int, job_id: int, m: chunks.Manifest):
    """``m`` with the whole image's sha256, computed now if the background has not yet."""
    from dataclasses import replace

    from provisiond import imagedigest

    job_log(db, job_id, "the image's whole sha256 is still being computed: computing it now")
    try:
        return replace(m, sha256=imagedigest.ensure(db, image_id))
    except (imagedigest.VerifyError, OSError) as exc:
        raise JobFailed(f"the image cannot be verified: {exc}")


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


def slot_path(ctx: Context, job_id: int) -> Path:
    """This deploy's report-in record (0600; it holds the one-time token)."""
    return ctx.config.state_dir / "installs" / f"local-{job_id}.slot"


def report_record(db: Database, resource_id: int, cmd_id: int) -> bytes:
    """The report-in record the agent writes into the disk's slot (web/stream.py)."""
    with db.reader() as s:
        cmd = open_command(s, resource_id, cmd_id, "deploy")
        path = cmd.params.get("report_slot")
    if not path or not os.path.isfile(path):
        raise NotFound(f"deploy command {cmd_id} has no report-in record")
    with open(path, "rb") as fh:
        return fh.read()


POLL = 1.0  # seconds between looks at the boot's evidence


class LocalStart:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.hub = FanoutHub(ctx)

    def run(self, job_id: int) -> str:
        db, scope = self.ctx.db, JobScope(self.ctx, job_id)
        with db.transaction() as s:
            app = scope.appliance(s)
            if app.image is None or app.image.volume is None:
                raise JobFailed(f"appliance {app.name}: its image has no master volume")
            app.params = {k: v for k, v in (app.params or {}).items() if k != "written"}
            image_id, path, image_name = app.image.id, app.image.volume.path, app.image.name
            res_id, res_ip, res_name = app.resource_id, app.resource.ip, app.resource.display_name
            mac = app.resource.mac
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
        if transport == "nc" and not m.sha256:  # a fresh capture's: the raw copy is checked by it
            m = _with_whole_sha256(db, image_id, job_id, m)
        # several machines of one bulk start: one multicast for all (provisiond/fanout.py); the
        # multicast bytes are the same for all, so a fanned-out disk proves its boot by DHCP
        cmd_id = self._fanout_command(job_id, transport, image_id, m, params)
        confirm = self.ctx.config.local.confirm_boot
        phones_home = confirm and cmd_id is None and reportslot.read_slot(path, m.size)
        slot = slot_path(self.ctx, job_id) if phones_home else None
        if slot is not None:
            token = new_token()
            record = reportslot.record(f"{self.ctx.config.http_base}/install/v1/done", token)
            slot.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_private(slot, record)
            with db.transaction() as s:
                job = scope.job(s)
                job.params = {**(job.params or {}), "callback_hash": hash_token(token)}
            scope.log(f"{image_name} has a report-in slot: its booted OS reports in "
                      "with a one-time token")  # fmt: skip
        sender = None
        if cmd_id is not None:
            transport = "multicast fan-out"
        if cmd_id is None and transport == "nc":
            sender = RawSender(str(self.ctx.config.address), path, m.size, res_ip).start()
        arg = cmd_id is None and encode_arg(
            disk=disk,
            transport=transport,
            size=m.size,
            sha256=m.sha256,
            port=sender and sender.port,
            workers=params.get("workers", 4),
            zeros=params.get("zeros", "write"),
            retries=params.get("retries", 5),
            timeout=params.get("chunk_timeout", 30),
            report_offset=slot and reportslot.OFFSET,
        )
        extra = {"report_slot": str(slot)} if slot else {}
        if cmd_id is None:
            cmd_id = start_command(self.ctx, job_id, res_id, "deploy", arg, image_id=image_id,
                                   **extra)  # fmt: skip
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
            if slot is not None:
                slot.unlink(missing_ok=True)
        scope.log(f"agent: {last}")
        if not confirm:
            with db.transaction() as s:
                job = scope.job(s)
                job.bytes_done = job.bytes_total
                if not appliances.booted(s, res_id, "image written and verified by the agent"):
                    raise JobFailed("the appliance left 'starting' while its disk was written")
            self.ctx.inventory.refresh()
            return (
                f"active: {image_name} written to {disk} of {res_name} and verified; "
                "booting from disk"
            )
        self.ctx.local_fetches.reset(res_id)  # a new boot attempt: count from here
        self.ctx.os_dhcp.watch(mac)
        try:
            with db.transaction() as s:
                job = scope.job(s)
                job.bytes_done = job.bytes_total
                app = scope.appliance(s)
                if app is None or app.state != AS.STARTING:
                    raise JobFailed("the appliance left 'starting' while its disk was written")
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                app.params = {**(app.params or {}), "written": stamp}
            self.ctx.inventory.refresh()
            self.ctx.ring()
            proof = "its report-in" if phones_home else "its DHCP request"
            limit = self.ctx.config.local.boot_timeout
            scope.log(f"written and verified; waiting for the booted OS of {res_name} "
                      f"({proof}, up to {limit} s)")  # fmt: skip
            what = f"wrote and verified {image_name} on {disk} of {res_name}"
            verdict = self._watch(job_id, res_id, mac, what, phones_home)
        finally:
            self.ctx.os_dhcp.unwatch(mac)
        return f"active: {image_name} written to {disk} of {res_name}, verified and booted: " + (
            verdict
        )

    def _fanout_command(self, job_id, transport, image_id, m, params) -> int | None:
        """The command of this job in a fan-out session (bulk start of one image), or None."""
        with self.ctx.db.reader() as s:
            fan = (s.get(Job, job_id).params or {}).get("fanout")
        if not fan or transport != "http" or params.get("fanout") in ("off", "0", False):
            return None
        return self.hub.command_for(job_id, fan, image_id, m, params, default_disk)

    def _watch(self, job_id: int, res_id: int, mac: str, what: str, phones_home: bool) -> str:
        """Until :func:`bootchain.judge_disk` decides (bounded by ``local.boot_timeout``)."""
        ctx, cfg, scope = self.ctx, self.ctx.config.local, JobScope(self.ctx, job_id)
        t0, dhcp_logged = time.monotonic(), False
        while True:
            with ctx.db.reader() as s:
                job = scope.job(s)
                app = scope.appliance(s)
                reported = (job.params or {}).get("reported")
                state, job_state = (app.state if app else None), job.state
            if job_state != JS.RUNNING or state not in (AS.STARTING, AS.ACTIVE):
                raise JobFailed(f"the appliance left 'starting' ({state}) before its OS was seen")
            dhcp = ctx.os_dhcp.seen(mac)
            if dhcp.count and not dhcp_logged:
                dhcp_logged = True
                scope.log(f"DHCP request of the booted OS seen "
                          f"({dhcp.ip or 'no address yet'}, vendor class "
                          f"{dhcp.vendor or 'none'})")  # fmt: skip
            verdict = bootchain.judge_disk(
                bootchain.DiskSeen(ctx.local_fetches.count(res_id), dhcp, reported,
                                   time.monotonic(), t0),
                what=what, phones_home=phones_home, max_fetches=cfg.max_script_fetches,
                timeout=cfg.boot_timeout,
            )  # fmt: skip
            if verdict.state == "failed":
                raise JobFailed(verdict.reason)
            if verdict.state == "active":
                if not reported:  # a report-in made it active already
                    with ctx.db.transaction() as s:
                        if not appliances.booted(s, res_id, verdict.reason):
                            raise JobFailed("the appliance left 'starting' before its OS was seen")
                ctx.inventory.refresh()
                scope.log(verdict.reason)
                return verdict.reason
            time.sleep(POLL)

    def fail(self, job_id: int, reason: str) -> None:
        slot_path(self.ctx, job_id).unlink(missing_ok=True)
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
