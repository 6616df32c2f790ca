"""QEMU test machines: command line, timestamped serial console, life time.

Owns one QEMU process per :class:`Vm` and the files it leaves in the test
bed's work directory (``<name>.pid``, ``<name>.console.log``, blank disks).
Machines run under TCG only (``/dev/kvm`` on these hosts is a PVM variant
that hangs), inside the test bed's network namespace (``nsenter --net``) on a
tap device of its bridge, with the NIC's iPXE option ROM from Debian's
``ipxe-qemu`` checked before start so a missing ROM fails loudly.

The console is QEMU's stdio (``-nographic``) piped through this module run
as a script (``python3 vm.py tslog LOG T0``), which writes one line per
console line prefixed with seconds since QEMU start. Both processes live in
their own session, so a VM outlives the Python process that started it (the
CLI ``boot`` command) and is stopped by its pidfile.

Stdlib only.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

QEMU = "qemu-system-x86_64"
ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>c]")
STAMP_RE = re.compile(r"^\[\s*(\d+\.\d+)\] (.*)$")

# QEMU device name -> Debian ipxe-qemu ROM (combined BIOS + EFI image)
NIC_ROMS = {"virtio-net-pci": "efi-virtio.rom", "e1000": "efi-e1000.rom"}
ROM_DIRS = (Path("/usr/lib/ipxe/qemu"), Path("/usr/share/qemu"))


class VmError(RuntimeError):
    """A machine did not reach the expected console output (message holds its tail)."""


def find_rom(nic: str) -> Path:
    """Absolute path of the iPXE option ROM QEMU loads for ``nic``."""
    name = NIC_ROMS.get(nic)
    if name is None:
        raise VmError(f"nic {nic!r}: unsupported; use one of {', '.join(NIC_ROMS)}")
    for d in ROM_DIRS:
        if (d / name).is_file():
            return d / name
    raise VmError(f"iPXE ROM {name} for {nic} not found in {ROM_DIRS}: apt-get install ipxe-qemu")


def missing_prerequisites() -> list[str]:
    """Why machines cannot run here (empty list = they can)."""
    why = []
    if os.geteuid() != 0:
        why.append("needs root (network namespaces, tap devices)")
    if not any((Path(p) / QEMU).exists() for p in os.environ.get("PATH", "").split(":")):
        why.append(f"{QEMU} not installed (apt-get install qemu-system-x86)")
    for nic in NIC_ROMS:
        try:
            find_rom(nic)
        except VmError as exc:
            why.append(str(exc))
    return why


@dataclass(frozen=True)
class VmSpec:
    """Everything QEMU needs to know about one machine."""

    name: str
    mac: str
    tap: str
    nic: str = "virtio-net-pci"
    mem: int = 512
    smp: int = 1
    disks: tuple[str, ...] = ()  # sizes like "1G"; blank sparse raw files
    disk_if: str = "virtio"  # "virtio" | "ide"
    boot: str = "n"
    kernel: str = ""
    initrd: str = ""
    append: str = ""
    extra: tuple[str, ...] = ()
    reboot: bool = False  # False: -no-reboot (a guest reboot ends QEMU)
    nic_rom: bool = True  # False: romfile= (UEFI then uses its own PXE / HTTP boot stack)
    qmp: bool = False  # True: a QMP unix socket (qmp_socket()), the test bed's "BMC"


def qemu_argv(spec: VmSpec, workdir: Path) -> list[str]:
    """The QEMU command line for ``spec`` (files placed under ``workdir``)."""
    argv = [QEMU, "-name", spec.name, "-accel", "tcg", "-cpu", "max"]
    argv += ["-m", str(spec.mem), "-smp", str(spec.smp), "-nographic"]
    if not spec.reboot:
        argv.append("-no-reboot")
    argv += ["-pidfile", str(workdir / f"{spec.name}.pid")]
    if spec.qmp:
        argv += ["-qmp", f"unix:{qmp_socket(spec.name, workdir)},server=on,wait=off"]
    argv += ["-netdev", f"tap,id=n0,ifname={spec.tap},script=no,downscript=no"]
    find_rom(spec.nic)  # QEMU loads it from its firmware path; an explicit
    # romfile= (even the same file) makes SeaBIOS skip the NIC's boot entry here
    rom = "" if spec.nic_rom else ",romfile="
    argv += ["-device", f"{spec.nic},netdev=n0,mac={spec.mac}{rom}"]
    for i, _size in enumerate(spec.disks):
        path = workdir / f"{spec.name}-disk{i}.raw"
        argv += ["-drive", f"file={path},format=raw,if={spec.disk_if},cache=unsafe"]
    if spec.kernel:
        argv += ["-kernel", spec.kernel, "-append", spec.append]
        if spec.initrd:
            argv += ["-initrd", spec.initrd]
    else:
        argv += ["-boot", spec.boot]
    return argv + list(spec.extra)


def qmp_socket(name: str, workdir: Path) -> Path:
    """Where a machine's QMP socket lives: beside its pidfile, or under /run when that
    path is too long for a unix socket (108 bytes)."""
    path = workdir / f"{name}.qmp"
    if len(str(path)) < 100:
        return path
    import hashlib

    short = Path("/run/provisiond-testbed")
    short.mkdir(parents=True, exist_ok=True)
    return short / (hashlib.sha256(str(path).encode()).hexdigest()[:16] + ".qmp")


def size_bytes(size: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    size = size.strip().upper()
    if size and size[-1] in units:
        return int(float(size[:-1]) * units[size[-1]])
    return int(size)


@dataclass
class Vm:
    """A running QEMU machine; stop it with :meth:`kill`."""

    spec: VmSpec
    workdir: Path
    started: float = 0.0
    _procs: list[subprocess.Popen] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def mac(self) -> str:
        return self.spec.mac

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.console.log"

    @property
    def pidfile(self) -> Path:
        return self.workdir / f"{self.name}.pid"

    @property
    def qmp_path(self) -> Path | None:
        """The QMP socket (``boot_vm(qmp=True)``), else None."""
        return qmp_socket(self.name, self.workdir) if self.spec.qmp else None

    def start(self, ns_prefix: list[str]) -> Vm:
        for i, size in enumerate(self.spec.disks):
            disk = self.workdir / f"{self.name}-disk{i}.raw"
            with open(disk, "wb") as f:
                f.truncate(size_bytes(size))  # sparse
        self.pidfile.unlink(missing_ok=True)
        if self.qmp_path is not None:
            self.qmp_path.unlink(missing_ok=True)
        argv = ns_prefix + qemu_argv(self.spec, self.workdir)
        self.started = time.time()
        self.log_path.write_text(f"# t0={self.started:.6f} {' '.join(argv)}\n")
        qemu = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        tslog = subprocess.Popen(
            [sys.executable, __file__, "tslog", str(self.log_path), f"{self.started:.6f}"],
            stdin=qemu.stdout,
            start_new_session=True,
        )
        qemu.stdout.close()  # the tslog child holds the read end now
        self._procs = [qemu, tslog]
        return self

    # -- console --------------------------------------------------------

    def console_lines(self) -> list[tuple[float, str]]:
        """(seconds since start, text) for every console line so far."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            m = STAMP_RE.match(line)
            if m:
                out.append((float(m.group(1)), m.group(2)))
        return out

    def console_text(self) -> str:
        return "\n".join(text for _, text in self.console_lines())

    def alive(self) -> bool:
        if self._procs:
            return self._procs[0].poll() is None
        pid = read_pid(self.pidfile)
        return pid is not None and pid_alive(pid)

    def wait_for(self, regex: str, timeout: float = 60) -> re.Match:
        """First console line matching ``regex``; raises :class:`VmError` on timeout/exit."""
        found = self.wait_for_timed(regex, timeout)
        return found[1]

    def wait_for_timed(self, regex: str, timeout: float = 60) -> tuple[float, re.Match]:
        """Like :meth:`wait_for`, plus the line's seconds since QEMU start."""
        pattern = re.compile(regex)
        deadline = time.monotonic() + timeout
        while True:
            for t, text in self.console_lines():
                m = pattern.search(text)
                if m:
                    return t, m
            if not self.alive():
                time.sleep(0.2)  # let tslog flush the last lines
                if any(pattern.search(text) for _, text in self.console_lines()):
                    continue
                raise VmError(f"{self.name} exited before /{regex}/:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise VmError(f"{self.name}: no /{regex}/ within {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.1)

    def tail(self, n: int = 25) -> str:
        return "\n".join(f"[{t:8.3f}] {s}" for t, s in self.console_lines()[-n:])

    def kill(self, timeout: float = 5) -> None:
        """Stop QEMU (by pidfile, else by the process we started) and reap helpers."""
        pid = read_pid(self.pidfile)
        if pid is None and self._procs and self._procs[0].poll() is None:
            pid = self._procs[0].pid
        if pid is not None:
            terminate(pid, timeout)
        for p in self._procs:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.pidfile.unlink(missing_ok=True)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def terminate(pid: int, timeout: float = 5) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; for one known pid."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.05)


def tslog(log_path: str, t0: float, fd: int = 0) -> None:
    """Copy ``fd`` (stdin) to ``log_path``, one stamped line per console line (CR or LF)."""
    buf = b""
    with open(log_path, "a", buffering=1, errors="replace") as out:
        for chunk in iter(lambda: os.read(fd, 4096), b""):
            buf += chunk
            parts = re.split(rb"[\r\n]", buf)
            buf = parts.pop()
            for raw in parts:
                text = ANSI_RE.sub("", raw.decode("utf-8", "replace")).strip()
                if text:
                    out.write(f"[{time.time() - t0:8.3f}] {text}\n")
        if buf.strip():
            out.write(f"[{time.time() - t0:8.3f}] {buf.decode('utf-8', 'replace').strip()}\n")


if __name__ == "__main__" and sys.argv[1:2] == ["tslog"]:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in a terminal: QEMU decides
    tslog(sys.argv[2], float(sys.argv[3]))
