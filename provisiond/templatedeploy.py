"""The ``template`` deployer: install from a template (FAI-style by the agent).

Owns the jobs of a ``template`` appliance, the install bundle the agent
fetches and the installed OS's one-time call back.

``appliance.start`` (set kind ``fai``, the default set ``fai-debian-12``):
    1. render the whole set for this machine **before anything is touched**
       (a missing variable or a refused value fails the job here, naming the
       template and the variable); the root file-system archive must be built
       (``provisiond rootfs build debian-12``);
    2. mint a one-time token for the installed OS's call back (only its hash
       is kept, in the job's params) and write the rendered files as one tar
       (the *bundle*, mode 0600 under ``state_dir/installs``; it holds the
       token) that only this command's agent may fetch;
    3. queue the agent command ``install`` (initrd ``commands.d/install.sh``)
       and wait for it: partition, mkfs, unpack (sha256, progress), configure,
       boot loader, post steps. Success → the appliance's ``installed`` param
       is set, so the boot policy answers "boot the local disk" when the agent
       reboots the machine;
    4. wait for the installed OS to call ``POST /install/v1/done`` with the
       token (:func:`report_in`): its host key is pinned, its address kept,
       appliance and resource become ``active``. No call within
       ``report_timeout`` (default 900 s) → ``failed``.

``appliance.stop`` leaves the disk as it is (as the ``local`` mode does).
"""

from __future__ import annotations

import io
import re
import tarfile
import time
from pathlib import Path

from sqlalchemy import select

from provisiond import appliances, installs, jobs, logs, rootfs, templatestore
from provisiond.agentjob import (
    Gone,
    JobScope,
    appliance_of,
    cancel_command,
    encode_arg,
    open_command,
    start_command,
    wait_command,
)
from provisiond.context import Context
from provisiond.errors import Invalid, NotFound, Unauthorized
from provisiond.jobrunner import JobFailed
from provisiond.lifecycle import ApplianceState as AS
from provisiond.lifecycle import JobState as JS
from provisiond.model import Appliance, Job, Kernel, Resource
from provisiond.security import hash_token, new_token, ssh_fingerprint, write_private
from provisiond.templating import Renderer, TemplateError, esc_cmdline

log = logs.get("template")
INSTALL_TIMEOUT = 3600
REPORT_TIMEOUT = 900
INSTALLER_TIMEOUT = 4 * 3600
INSTALL_KEYS = ("installed", "install_kernel", "install_initrds", "install_cmdline")


def bundle_dir(ctx: Context) -> Path:
    return ctx.config.state_dir / "installs"


def bundle_path(ctx: Context, job_id: int) -> Path:
    return bundle_dir(ctx) / f"job-{job_id}.tar"


def make_bundle(files: dict[str, str], modes: dict[str, int]) -> bytes:
    """A reproducible tar of the rendered files (dirs 0755, files 0644 unless ``modes``)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        dirs = sorted(
            {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
        )
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, modes.get(d, 0o755)
            tar.addfile(info)
        for path, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), modes.get(path, 0o644)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def renderer(ctx: Context) -> Renderer:
    """Shipped and stored sets (:mod:`provisiond.templatestore`)."""
    return templatestore.renderer(ctx.config, ctx.db)


class TemplateStart:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def run(self, job_id: int) -> str:
        ctx, db, scope = self.ctx, self.ctx.db, JobScope(self.ctx, job_id)
        r = renderer(ctx)
        token = new_token()
        waiting = None
        with db.transaction() as s:
            job, app = scope.job(s), scope.appliance(s)
            res = app.resource
            app.params = {k: v for k, v in (app.params or {}).items() if k not in INSTALL_KEYS}
            name = str((app.params or {}).get("template") or installs.DEFAULT_SET)
            try:
                tset = r.get(name)
                if tset.kind != "fai":
                    waiting = self._installer(s, job, app, tset, token)
                    params = {}
                else:
                    params = installs.merged_params(res, app, {})
            except TemplateError as exc:
                raise JobFailed(exc.message)
        if waiting is not None:
            ctx.inventory.refresh()
            ctx.ring()
            return self._wait_report(*waiting)
        with db.transaction() as s:
            job, app = scope.job(s), scope.appliance(s)
            res = app.resource
            try:
                ref = rootfs.lookup(params["rootfs"])
                if ref is None:
                    raise JobFailed(f"rootfs {params['rootfs']} is not built: run "
                                    f"`provisiond rootfs build {params['rootfs']}`")  # fmt: skip
                variables = installs.variables(ctx.config, res, app, name, token=token, rootfs=ref)
                files = r.render(name, variables)
            except TemplateError as exc:
                raise JobFailed(exc.message)
            job.params = {**(job.params or {}), "callback_hash": hash_token(token)}
            res_id, res_name, disk = res.id, res.display_name, params["disk"]
            firmware = params["firmware"]
        mib = ref.size / 2**20
        scope.log(f"rendered {name}: {len(files)} files for {res_name} "
                  f"({firmware}, {disk}); rootfs {ref.name} {mib:.0f} MiB")  # fmt: skip
        path = bundle_path(ctx, job_id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(path, make_bundle(files, dict(tset.modes)))
        arg = encode_arg(disk=disk, firmware=firmware, template=name)
        cmd_id = start_command(ctx, job_id, res_id, "install", arg, bundle=str(path))
        scope.log(f"asked the agent of {res_name} to install (command {cmd_id})")
        try:
            last = wait_command(ctx, job_id, cmd_id, float(params.get("timeout", INSTALL_TIMEOUT)))
        except JobFailed:
            with db.reader() as s:
                out = s.get(Job, cmd_id).log.splitlines()
            scope.log("agent output (last lines):\n" + "\n".join(out[-25:]))
            raise
        finally:
            path.unlink(missing_ok=True)
        scope.log(f"agent: {last}")
        with db.transaction() as s:
            app = scope.appliance(s)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            app.params = {**(app.params or {}), "installed": stamp}
        ctx.inventory.refresh()
        scope.log("installed; waiting for the installed OS to report in")
        return self._wait_report(job_id, res_name, float(params.get("report_timeout",
                                                                    REPORT_TIMEOUT)))  # fmt: skip

    def _installer(self, s, job: Job, app: Appliance, tset, token: str) -> tuple[int, str, float]:
        """Installer sets: boot the installer kernel with the answer file's one-time URL."""
        ctx, res = self.ctx, app.resource
        kernel = s.get(Kernel, app.kernel_id) if app.kernel_id else None
        if kernel is None:
            raise JobFailed(
                f"template {tset.name} ({tset.kind}) boots an installer: give the appliance its "
                "kernel (`provisiond kernel add NAME --kernel linux --initrd initrd.gz`, then "
                "`appliance create ... --kernel NAME`)"
            )
        variables = installs.variables(ctx.config, res, app, tset.name, token=token,
                                       answer=tset.answer)  # fmt: skip
        files = renderer(ctx).render(tset.name, variables)  # every file renders, or no reboot
        for word in kernel.cmdline.split():
            esc_cmdline(word)  # the Kernel's own arguments too: refused now, not at boot
        cmdline = " ".join(p for p in (renderer(ctx).cmdline(tset, variables), kernel.cmdline) if p)
        job.params = {**(job.params or {}), "callback_hash": hash_token(token)}
        initrds = [kernel.initrd_path] if kernel.initrd_path else []
        initrds += renderer(ctx).initrd_urls(tset, variables)
        app.params = {**(app.params or {}), "install_kernel": kernel.kernel_path,
                      "install_initrds": initrds,
                      "install_cmdline": cmdline}  # fmt: skip
        jobs.append_log(job, f"rendered {tset.name}: {', '.join(files)}; installer {kernel.name}")
        cmd = jobs.enqueue_command(s, res, "reboot", actor="daemon")
        cmd.params = {**cmd.params, "parent": job.id}
        jobs.append_log(job, f"asked the agent of {res.display_name} to reboot into the installer")
        timeout = float((app.params or {}).get("report_timeout", INSTALLER_TIMEOUT))
        return job.id, res.display_name, timeout

    def _wait_report(self, job_id: int, res_name: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.ctx.db.reader() as s:
                job = s.get(Job, job_id)
                app = appliance_of(s, job)
                state, reported = (app.state if app else None), (job.params or {}).get("reported")
                job_state = job.state
            if state == AS.ACTIVE and reported:
                return f"active: {res_name} installed and reported in as {reported}"
            if state != AS.STARTING or job_state != JS.RUNNING:
                raise JobFailed(
                    f"the appliance left 'starting' ({state}) before the OS reported in"
                )
            time.sleep(0.5)
        raise JobFailed(
            f"the installed OS of {res_name} did not report in within {timeout:.0f} s "
            "(does it boot from its disk? see its console)"
        )

    def fail(self, job_id: int, reason: str) -> None:
        cancel_command(self.ctx.db, job_id, reason)
        bundle_path(self.ctx, job_id).unlink(missing_ok=True)
        appliances.fail_job(self.ctx.db, job_id, reason)
        self.ctx.inventory.refresh()


class TemplateStop:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def run(self, job_id: int) -> str:
        with self.ctx.db.transaction() as s:
            app = appliance_of(s, job_id)
            app.params = {k: v for k, v in (app.params or {}).items() if k not in INSTALL_KEYS}
            appliances.stopped(s, app, "installed disk left as it is")
        self.ctx.inventory.refresh()
        return "stopped: the disk keeps its OS; power-cycle the machine into PXE to reuse it"

    def fail(self, job_id: int, reason: str) -> None:
        appliances.fail_job(self.ctx.db, job_id, reason)


# --- the server side of the install's HTTP calls (web/install.py) ---------------


def bundle_for(ctx: Context, resource_id: int, cmd_id: int) -> Path:
    with ctx.db.reader() as s:
        cmd = open_command(s, resource_id, cmd_id, "install")
        path = Path(cmd.params.get("bundle", ""))
    if not path.is_file():
        raise Gone(f"the bundle of command {cmd_id} is gone")
    return path


def report_in(ctx: Context, token: str, ip: str | None, hostname: str, hostkey: str) -> str:
    """The installed OS calls back once: pin its host key, appliance and resource active.

    Also the report-in of a ``local`` deploy's booted OS (:mod:`provisiond.localdeploy`,
    the token from its disk's report-in slot): one path for both modes.
    """
    digest = hash_token(token)
    with ctx.db.transaction() as s:
        running = s.scalars(
            select(Job).where(Job.kind == "appliance.start", Job.state == JS.RUNNING)
        ).all()
        job = next((j for j in running if (j.params or {}).get("callback_hash") == digest), None)
        if job is None:
            raise Unauthorized("unknown or already used install token")
        res = s.get(Resource, job.resource_id)
        if hostkey:
            try:
                res.hostkey_fingerprint = ssh_fingerprint(hostkey)
                res.hostkey = hostkey
            except ValueError:
                log.warning("%s reported a malformed host key; keeping the old one", res.mac)
        if ip and not res.ip:
            res.ip = ip
        job.params = {k: v for k, v in job.params.items() if k != "callback_hash"}
        job.params = {**job.params, "reported": hostname or res.display_name}
        appliances.booted(s, res.id, f"the booted OS reported in as {hostname or res.display_name}")
        name = res.display_name
    ctx.inventory.refresh()
    log.info("%s: the installed OS reported in as %s", name, hostname)
    return name


def _running_install(session, resource_id: int, token: str) -> Job | None:
    digest = hash_token(token)
    for job in session.scalars(
        select(Job).where(Job.kind == "appliance.start", Job.state == JS.RUNNING,
                          Job.resource_id == resource_id)
    ):  # fmt: skip
        if (job.params or {}).get("callback_hash") == digest:
            return job
    return None


#: what an installer may report on its way (``.../progress/<step>``): a short word
_STEP = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
MAX_STEPS = 32  # per install: a chatty or hostile installer cannot flood the job log


def installer_progress(ctx: Context, resource_id: int, token: str, step: str) -> str:
    """An installer reports a step (its preseed's early command, a kickstart %pre, ...).

    Same one-time token as the answer file, and only while the resource
    installs; the step lands in the ``appliance.start`` job's log, so CLI, API
    and UI show how far the installer got.
    """
    if not _STEP.match(step):
        raise Invalid(f"installer step {step[:40]!r}: one word of a-z, 0-9 and '-'", "step")
    with ctx.db.transaction() as s:
        job = _running_install(s, resource_id, token)
        app = appliance_of(s, job)
        if job is None or app is None or app.state != AS.STARTING:
            raise NotFound("no install in progress for this URL")
        steps = list((job.params or {}).get("installer_steps", []))
        if len(steps) >= MAX_STEPS:
            return f"ignored: already {MAX_STEPS} steps"
        job.params = {**(job.params or {}), "installer_steps": [*steps, step]}
        jobs.append_log(job, f"installer of {app.resource.display_name}: {step}")
        job_id = job.id
    log.info("job %d: installer of resource %d reports %s", job_id, resource_id, step)
    return f"recorded: {step}"


def answer_file(ctx: Context, resource_id: int, token: str, path: str) -> str:
    """A rendered file of the installing resource's set, only while it installs (else 404)."""
    with ctx.db.reader() as s:
        job = _running_install(s, resource_id, token)
        app = appliance_of(s, job)
        if job is None or app is None or app.state != AS.STARTING:
            raise NotFound("no install in progress for this URL")
        name = str((app.params or {}).get("template") or installs.DEFAULT_SET)
        r = renderer(ctx)
        tset = r.get(name)
        variables = installs.variables(ctx.config, app.resource, app, name, token=token,
                                       answer=tset.answer)  # fmt: skip
        if path == "authorized_keys":
            return "".join(f"{k}\n" for k in variables["ssh_keys"])
        if path not in tset.files:
            raise NotFound(f"{name} has no file {path!r}")
        return r.render(f"{name}/{path}", variables).get(path, "")
