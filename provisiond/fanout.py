"""Fan-out: one image to N machines at once, over multicast (udpcast), in about the time of one.

Owns the fan-out session of a group of ``local`` appliance starts: who is in
it, the agent commands, the ``udp-sender`` process and what the job logs say
about each receiver. The pure parts (command line, output parsing, receiver
status) are :mod:`provisiond.mcast`; the agent side is
``initrd/.../commands.d/fanout.sh`` (``deploy`` command, transport ``mcast``).

Why multicast and not peer-to-peer chunk exchange: the bottleneck of a
unicast deploy to N machines is the server's one port (N copies of every
byte). Multicast puts every byte on that port once and the switch copies it
— the Frisbee/Clonezilla result — and needs nothing but ``udp-receiver``
(Debian ``udpcast``, one small binary) in the initrd. Peer-to-peer would need
an authenticated chunk server in every initrd agent (agents hold no
credentials for each other and we assume an attacker on the provisioning
network) and still starts with the server's port as the only source.
udpcast is reliable by itself (NACK/retransmission per slice), its knobs
bound a bad receiver (``--retries-until-drop``; ``--max-wait`` for one that
never joins) and anything a receiver still lacks is fetched over the
existing authenticated HTTP chunk path — the same verified stream unicast
deploys use.

How a group forms: the bulk "assign one image to many" action
(:mod:`provisiond.bulk`) marks each ``appliance.start`` job of a local-mode
assignment of two or more machines with ``params.fanout = {group, size}``.
The first of those jobs to run opens the session: it waits up to
``fanout_window`` s until all ``size`` jobs of the group exist, takes every
queued or running one whose appliance is local mode with the same image
(others deploy alone, by unicast), queues one agent command per member
(``deploy`` with ``transport=mcast``, the group's port and rendezvous
address) and runs ``udp-sender`` feeding it the image's non-zero chunks in
manifest order. Each member's job then waits for its own agent's result
exactly like a unicast deploy (so it needs no job-runner worker while the
session runs: a job still in the runner's queue finds its command done).

Integrity: the multicast bytes are not trusted. Every receiver checks every
chunk's sha256 against the manifest it fetched over its authenticated HTTP
channel, writes it, reads it back and checks it again; a chunk that fails,
or never came (lost, receiver dropped, sender gone), is fetched over HTTP.
A forged packet on the segment can only cause such a repair. The image's
bytes are visible to every host on the provisioning segment while they
travel (as over TFTP/HTTP without TLS); the traffic stays there: the
interface is named, TTL 1, administratively scoped groups (239.255/16).

Settings: the bulk action's ``fanout`` settings (max_wait, rate;
:class:`provisiond.bulk.FanoutSettings`) travel in the group's mark and win
over the first member appliance's ``fanout_*`` parameters.

Bounds: a machine that never joins is left behind ``fanout_max_wait`` s
(default 20) after the first joined; one that stops answering is dropped
after ``fanout_retries`` unanswered acknowledgement requests (default 30);
both then fetch what they lack over HTTP, the others do not wait for them.
One that never picks up its command at all fails alone after ``[agent]
pickup_timeout`` (:mod:`provisiond.pickup`): its job and machine go
``failed``, the session logs it dropped, the others go on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field

from provisiond import chunks, logs, lookup, mcast
from provisiond.agentjob import encode_arg, job_log, start_command
from provisiond.context import Context
from provisiond.lifecycle import JobState as JS
from provisiond.model import Job

log = logs.get("fanout")
WINDOW = 10.0  # s the first job of a group waits for the others to be queued
FEED = 1024 * 1024  # bytes written to udp-sender's stdin at once


@dataclass
class Member:
    job_id: int
    res_id: int
    name: str
    ip: str
    disk: str
    params: dict
    cmd_id: int | None = None


@dataclass
class Session:
    group: str
    size: int
    image_id: int
    ready: threading.Event = field(default_factory=threading.Event)
    members: dict[int, Member] = field(default_factory=dict)  # by job id
    finished: threading.Event = field(default_factory=threading.Event)
    note: str = ""
    dropped: set[int] = field(default_factory=set)  # job ids whose command was never picked up


def settings(fan: dict, params: dict) -> dict:
    """The session's knobs: the bulk action's (its ``fanout`` mark) over the appliance's."""
    out = dict(params)
    if fan.get("max_wait") is not None:
        out["fanout_max_wait"] = fan["max_wait"]
    if fan.get("rate"):
        out["fanout_bitrate"] = fan["rate"]
    return out


class FanoutHub:
    """The daemon's fan-out sessions, by group; one per LocalStart handler."""

    def __init__(self, ctx: Context, program: str = "udp-sender") -> None:
        self.ctx, self.program = ctx, program
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._slots: set[int] = set()

    def command_for(self, job_id: int, fan: dict, image_id: int, manifest: chunks.Manifest,
                    params: dict, default_disk) -> int | None:  # fmt: skip
        """The agent command of this job in its group's session; None: deploy alone (unicast)."""
        group, size = str(fan.get("group", "")), int(fan.get("size", 0) or 0)
        if not group or size < 2:
            return None
        with self._lock:
            sess = self._sessions.get(group)
            if sess is None:
                sess = self._sessions[group] = Session(group, size, image_id)
                threading.Thread(target=self._run,
                                 args=(sess, manifest, settings(fan, params), default_disk),
                                 name=f"fanout-{group}", daemon=True).start()  # fmt: skip
        window = float(params.get("fanout_window", WINDOW))
        if not sess.ready.wait(window + 60):
            return None
        member = sess.members.get(job_id)
        if member is None or member.cmd_id is None:
            if sess.note:
                job_log(self.ctx.db, job_id, f"fan-out: {sess.note}; deploying alone (unicast)")
            return None
        return member.cmd_id

    # --- the session ----------------------------------------------------------

    def _run(self, sess: Session, m: chunks.Manifest, params: dict, default_disk) -> None:
        slot = None
        try:
            members = self._gather(sess, float(params.get("fanout_window", WINDOW)), default_disk)
            if len(members) < 2:
                sess.note = f"only {len(members)} machine(s) of group {sess.group} to start"
                return
            if shutil.which(self.program) is None:
                sess.note = f"{self.program} is not installed (apt-get install udpcast)"
                return
            iface = self._interface()
            if iface is None:
                sess.note = f"no interface holds {self.ctx.config.address} (set interface=)"
                return
            slot = self._take_slot()
            opts = mcast.SenderOptions(
                iface, slot, len(members),
                max_wait=int(params.get("fanout_max_wait", 20)),
                retries_until_drop=int(params.get("fanout_retries", 30)),
                max_bitrate=str(params.get("fanout_bitrate", "")),
            )  # fmt: skip
            for mem in members:
                sess.members[mem.job_id] = mem
                mem.cmd_id = self._command(mem, opts, m, sess)
            sess.ready.set()
            self._send(sess, opts, m)
        except Exception as exc:  # the session dies, the members repair over HTTP or fail alone
            log.exception("fan-out %s failed", sess.group)
            sess.note = sess.note or f"the session failed: {exc}"
        finally:
            sess.ready.set()
            sess.finished.set()
            with self._lock:
                self._slots.discard(slot)
                # keep the finished session a while: late jobs of the group find their command
                threading.Timer(600, self._forget, args=(sess.group,)).start()

    def _forget(self, group: str) -> None:
        with self._lock:
            self._sessions.pop(group, None)

    def _take_slot(self) -> int:
        with self._lock:
            free = next((s for s in range(mcast.SLOTS) if s not in self._slots), None)
            if free is None:
                raise RuntimeError(f"{mcast.SLOTS} fan-out sessions already run")
            self._slots.add(free)
            return free

    def _interface(self) -> str | None:
        if self.ctx.config.interface:
            return self.ctx.config.interface
        out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True,
                             check=False).stdout  # fmt: skip
        return mcast.interface_of(str(self.ctx.config.address), out)

    def _gather(self, sess: Session, window: float, default_disk) -> list[Member]:
        deadline = time.monotonic() + window
        while True:
            found = self._members(sess, default_disk)
            if len(found) >= sess.size or time.monotonic() >= deadline:
                return found
            time.sleep(0.3)

    def _members(self, sess: Session, default_disk) -> list[Member]:
        out = []
        with self.ctx.db.reader() as s:
            jobs = s.query(Job).filter(Job.kind == "appliance.start",
                                       Job.state.in_([JS.QUEUED, JS.RUNNING])).all()  # fmt: skip
            for job in jobs:
                fan = (job.params or {}).get("fanout") or {}
                if fan.get("group") != sess.group or (job.params or {}).get("command"):
                    continue
                app = lookup.appliance_of(s, job)
                if app is None or app.mode != "local" or app.image_id != sess.image_id:
                    continue
                res = app.resource
                p = dict(app.params or {})
                out.append(Member(job.id, res.id, res.display_name, str(res.ip or ""),
                                  p.get("disk") or default_disk(res.inventory), p))  # fmt: skip
        return out

    def _command(self, mem: Member, o: mcast.SenderOptions, m: chunks.Manifest, sess) -> int:
        arg = encode_arg(
            disk=mem.disk, transport="mcast", size=m.size, sha256=m.sha256,
            # a receiver that comes after the transfer started cannot join it: it gives up after
            # the others' gathering (window + max-wait) and fetches everything over HTTP
            port=o.portbase, rdv=o.rdv,
            start_timeout=int(mem.params.get("fanout_start_timeout", WINDOW + o.max_wait + 30)),
            receive_timeout=int(mem.params.get("fanout_receive_timeout", 15)),
            workers=mem.params.get("workers", 4), zeros=mem.params.get("zeros", "write"),
            retries=mem.params.get("retries", 5), timeout=mem.params.get("chunk_timeout", 30),
        )  # fmt: skip
        cmd_id = start_command(self.ctx, mem.job_id, mem.res_id, "deploy", arg,
                               image_id=sess.image_id)  # fmt: skip
        job_log(self.ctx.db, mem.job_id,
                f"fan-out: one of {o.receivers} machines of group {sess.group} receiving over "
                f"multicast ({o.interface}, group {o.data}, port {o.portbase}; command "
                f"{cmd_id})")  # fmt: skip
        return cmd_id

    def _log_all(self, sess: Session, line: str) -> None:
        for mem in sess.members.values():
            job_log(self.ctx.db, mem.job_id, line)

    def _send(self, sess: Session, o: mcast.SenderOptions, m: chunks.Manifest) -> None:
        with self.ctx.db.reader() as s:
            from provisiond.model import Image

            path = s.get(Image, sess.image_id).volume.path
        table = mcast.Receivers.of({mem.ip: mem.name for mem in sess.members.values()})
        proc = subprocess.Popen(mcast.sender_argv(o, self.program), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
        feeder = threading.Thread(target=_feed, args=(proc, path, m), daemon=True)
        feeder.start()
        t0 = time.monotonic()
        buf, last_progress = "", 0.0
        assert proc.stdout is not None
        while True:
            data = os.read(proc.stdout.fileno(), 4096)
            if not data:
                break
            lines, buf = mcast.split_output(buf + data.decode("utf-8", "replace"))
            for line in lines:
                ev = mcast.parse_sender_line(line)
                said = table.apply(ev) if ev else None
                if said:
                    self._log_all(sess, said)
                if ev and ev.kind == mcast.PROGRESS and time.monotonic() - last_progress > 10:
                    last_progress = time.monotonic()
                    self._progress(sess, m)
        rc = proc.wait()
        feeder.join(5)
        self._progress(sess, m)
        self._log_all(sess, f"fan-out: udp-sender exited {rc} after "
                            f"{time.monotonic() - t0:.1f} s; {table.summary()}")  # fmt: skip

    def _progress(self, sess: Session, m: chunks.Manifest) -> None:
        """One log line with every receiver's progress (its agent reports bytes written)."""
        parts, gone = [], []
        with self.ctx.db.reader() as s:
            for mem in sess.members.values():
                cmd = s.get(Job, mem.cmd_id) if mem.cmd_id else None
                if cmd and cmd.state == JS.FAILED and cmd.started_at is None \
                        and mem.job_id not in sess.dropped:  # fmt: skip
                    sess.dropped.add(mem.job_id)  # its pickup deadline passed (pickup.py)
                    gone.append(f"fan-out: dropped {mem.name}: {cmd.outcome}; the others go on")
                done = cmd.bytes_done if cmd else 0
                pct = 100 * done / m.data_bytes if m.data_bytes else 100
                parts.append(f"{mem.name} {pct:.0f}%" + (f" ({cmd.state})" if cmd
                             and cmd.state != JS.RUNNING else ""))  # fmt: skip
        for line in gone:
            self._log_all(sess, line)
        self._log_all(sess, "fan-out progress: " + ", ".join(parts))


def _feed(proc: subprocess.Popen, path: str, m: chunks.Manifest) -> None:
    """The image's non-zero chunks, in manifest order, raw, into udp-sender's stdin."""
    assert proc.stdin is not None
    try:
        with open(path, "rb") as fh:
            for c in m.chunks:
                length = m.length(c.index)
                base = c.index * m.chunk_size
                for off in range(0, length, FEED):
                    n = min(FEED, length - off)
                    data = os.pread(fh.fileno(), n, base + off).ljust(n, b"\0")
                    proc.stdin.write(data)
        proc.stdin.close()
    except (BrokenPipeError, ValueError, OSError) as exc:
        log.info("fan-out: udp-sender stopped reading (%s)", exc)
        try:
            proc.stdin.close()
        except OSError:
            pass
