"""TFTP benchmark: provisiond vs atftpd vs tftpd-hpa, 50 concurrent atftp clients.

Owns the TFTP figures in BENCHMARKS.md. Every server runs on
127.0.0.1 (a high port), one after the other in one run; clients are the
real ``atftp`` program fetching ipxe.efi (~830 KiB) at once. The server is
pinned to CPU 0 and the clients to CPU 1 (``taskset``) when there are two
cores. Installs what is missing (atftp, atftpd with apt-get; tftpd-hpa, which
conflicts with atftpd, with ``apt-get download`` + ``dpkg-deb -x`` into a
temporary directory) and checks that no TFTP server listens on a real
interface afterwards.

    .venv/bin/python bench/tftp/bench.py [--clients 50] [--rounds 3]

Prints per scenario and server the median wall time, the server's CPU time,
the options the server granted (from ``atftp --trace``'s OACK) and the ratio
provisiond / atftpd (goal: <= 1).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
SCENARIOS = {
    "windowsize 16": ["windowsize 16"],
    "blksize 1428 + windowsize 16": ["blksize 1428", "windowsize 16"],
    "blksize 1428, lockstep (as PXE ROMs ask)": ["blksize 1428"],
    "plain RFC 1350 (512, lockstep)": [],
}
DEADLINE = 600.0  # whole run, seconds


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# --------------------------------------------------------------------------- installs


def apt_install(package: str) -> None:
    guard = Path("/usr/sbin/policy-rc.d")
    made_guard = not guard.exists()
    if made_guard:  # never let a package start a service on a real interface
        guard.write_text("#!/bin/sh\nexit 101\n")
        guard.chmod(0o755)
    try:
        print(f"# apt-get install {package}", flush=True)
        r = sh("apt-get", "install", "-y", "--no-install-recommends", package)
        if r.returncode:
            sh("apt-get", "update")
            sh("apt-get", "install", "-y", "--no-install-recommends", package, check=True)
    finally:
        if made_guard:
            guard.unlink()


def ensure_tools(work: Path) -> dict[str, str]:
    if not shutil.which("atftp"):
        apt_install("atftp")
    if not shutil.which("taskset"):
        apt_install("util-linux")
    if not (shutil.which("atftpd") or Path("/usr/sbin/atftpd").exists()):
        apt_install("atftpd")
    hpa = Path("/usr/sbin/in.tftpd")  # atftpd ships a link of the same name
    if sh("dpkg", "-s", "tftpd-hpa").returncode:  # conflicts with atftpd: unpack it
        sh("apt-get", "download", "tftpd-hpa", cwd=work)
        debs = sorted(work.glob("tftpd-hpa_*.deb"))
        if not debs:
            sh("apt-get", "update")
            sh("apt-get", "download", "tftpd-hpa", cwd=work, check=True)
            debs = sorted(work.glob("tftpd-hpa_*.deb"))
        sh("dpkg-deb", "-x", str(debs[-1]), str(work / "hpa"), check=True)
        hpa = work / "hpa/usr/sbin/in.tftpd"
    check_no_real_listener()
    return {"atftpd": shutil.which("atftpd") or "/usr/sbin/atftpd", "in.tftpd": str(hpa)}


def check_no_real_listener() -> None:
    """Installs must not leave a TFTP server listening on a real interface."""
    out = sh("ss", "-lnup").stdout
    bad = [line for line in out.splitlines() if ":69 " in line and "127.0.0.1" not in line]
    if bad:
        sys.exit("a TFTP server listens on a real interface; stop it first:\n" + "\n".join(bad))


# --------------------------------------------------------------------------- servers


def server_cmd(name: str, tools: dict[str, str], root: Path, port: int) -> list[str]:
    if name == "provisiond":
        return [sys.executable, __file__, "--serve", str(root), str(port)]
    if name == "atftpd":
        return [tools["atftpd"], "--daemon", "--no-fork", "--bind-address", HOST,
                "--port", str(port), "--logfile", "/dev/null", "--user", "nobody",
                "--group", "nogroup", "--no-multicast", "--maxthread", "200",
                str(root)]  # fmt: skip
    return [tools["in.tftpd"], "--foreground", "--listen", "--address", f"{HOST}:{port}",
            "--user", "nobody", "--secure", str(root)]  # fmt: skip


def pinned(cpu: str, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *cmd] if (os.cpu_count() or 1) >= 2 else cmd


def wait_listening(port: int, timeout: float = 10.0) -> None:
    """Probe with an RRQ for a missing file until an ERROR comes back."""
    end = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        while time.monotonic() < end:
            s.sendto(b"\0\x01no-such-file\0octet\0", (HOST, port))
            try:
                if s.recvfrom(600)[0][:2] == b"\0\x05":
                    return
            except (TimeoutError, ConnectionRefusedError):
                pass
    raise RuntimeError(f"server on port {port} did not answer")


def cpu_seconds(pid: int) -> float:
    """utime + stime (+ waited-for children's). tftpd-hpa's children are not
    waited for (SIGCHLD ignored), so its figure is reported as n/a."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- clients


def atftp_cmd(port: int, remote: str, local: Path, opts: list[str], trace=False) -> list[str]:
    cmd = ["atftp", "-g", "-r", remote, "-l", str(local)]
    for opt in opts:
        cmd += ["--option", opt]
    return [*cmd, *(["--trace"] if trace else []), HOST, str(port)]


def granted(port: int, work: Path, opts: list[str]) -> str:
    r = sh(*atftp_cmd(port, "ipxe.efi", work / "trace.out", opts, trace=True), timeout=60)
    text = r.stdout + r.stderr
    if "received OACK" not in text:
        return "no OACK"
    return text.split("received OACK", 1)[1].splitlines()[0].strip(" <>,")


def one_round(port: int, work: Path, opts: list[str], clients: int, want: str) -> float:
    outs = [work / f"c{i}.out" for i in range(clients)]
    for out in outs:
        out.unlink(missing_ok=True)
    start = time.monotonic()
    procs = [
        subprocess.Popen(
            pinned("1", atftp_cmd(port, "ipxe.efi", out, opts)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for out in outs
    ]
    codes = [p.wait(timeout=180) for p in procs]
    wall = time.monotonic() - start
    bad = sum(1 for c, o in zip(codes, outs, strict=True) if c or sha(o) != want)
    if bad:
        raise RuntimeError(f"{bad} of {clients} clients failed or got wrong bytes")
    return wall


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


# --------------------------------------------------------------------------- main


def bench_server(name, tools, root, work, clients, rounds, only="") -> dict[str, tuple]:
    port = free_port()
    proc = subprocess.Popen(pinned("0", server_cmd(name, tools, root, port)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    results = {}
    try:
        try:
            wait_listening(port)
        except RuntimeError:
            proc.kill()
            raise RuntimeError(f"{name} did not start: {proc.communicate()[1].decode()[-500:]}")
        want = sha(root / "ipxe.efi")
        for label, opts in SCENARIOS.items():
            if only not in label:
                continue
            oack = granted(port, work, opts) if opts else "-"
            cpu0 = cpu_seconds(proc.pid)
            walls = [one_round(port, work, opts, clients, want) for _ in range(rounds)]
            cpu = (cpu_seconds(proc.pid) - cpu0) / rounds if name != "tftpd-hpa" else float("nan")
            results[label] = (statistics.median(walls), walls, cpu, oack)
            rounds_text = " ".join(f"{w:.3f}" for w in walls)
            print(f"  {name:10s} {label:40s} median {results[label][0]:6.3f} s  "
                  f"rounds {rounds_text}  server{cpu_note(cpu) or ' CPU n/a'}  "
                  f"OACK: {oack}", flush=True)  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return results


def serve(root: str, port: int) -> None:
    """``--serve``: run provisiond's TftpService alone (so it can be pinned)."""
    sys.path.insert(0, str(REPO))
    from provisiond import pxesettings
    from provisiond.config import Config, ServicesConfig
    from pxe.tftp.server import TftpService

    cfg = Config(boot_assets_dir=Path(root), services=ServicesConfig(tftp_port=port))
    svc = TftpService(pxesettings.tftp(cfg))
    svc.start()
    signal.sigwait([signal.SIGTERM, signal.SIGINT])
    svc.stop()


def cpu_note(cpu: float) -> str:
    return "" if cpu != cpu else f" (CPU {cpu:.2f} s)"  # NaN: not measurable


def loadavg_fields() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--servers", default="provisiond,atftpd,tftpd-hpa")
    ap.add_argument("--only", default="", help="run only scenarios whose name has this text")
    ap.add_argument("--serve", nargs=2, metavar=("ROOT", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGINT])
        return serve(args.serve[0], int(args.serve[1]))
    signal.signal(signal.SIGALRM, lambda *_: sys.exit(f"bench exceeded {DEADLINE:.0f} s"))
    signal.alarm(int(DEADLINE))
    with tempfile.TemporaryDirectory(prefix="bench-tftp-") as tmp:
        work = Path(tmp)
        tools = ensure_tools(work)
        root = work / "boot"
        root.mkdir()
        shutil.copy("/usr/lib/ipxe/ipxe.efi", root / "ipxe.efi")
        for p in (work, root, root / "ipxe.efi"):
            p.chmod(0o755)  # atftpd / tftpd-hpa drop to nobody
        size = (root / "ipxe.efi").stat().st_size
        print(f"# {args.clients} concurrent atftp clients x ipxe.efi ({size} bytes), "
              f"{args.rounds} rounds; server on CPU 0, clients on CPU 1; "
              f"load average {' '.join(loadavg_fields())}", flush=True)  # fmt: skip
        res = {n: bench_server(n, tools, root, work, args.clients, args.rounds, args.only)
               for n in args.servers.split(",")}  # fmt: skip
    print("\n| scenario | " + " | ".join(res) + " | provisiond/atftpd |")
    print("|---|" + "---|" * (len(res) + 1))
    for label in SCENARIOS:
        if args.only not in label:
            continue
        cells = [f"{res[n][label][0]:.3f} s{cpu_note(res[n][label][2])}" for n in res]
        ratio = "-"
        if "provisiond" in res and "atftpd" in res:
            ratio = f"{res['provisiond'][label][0] / res['atftpd'][label][0]:.2f}"
        print(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")
    print(f"# load average at the end: {' '.join(loadavg_fields())} (other work on the machine)")
    check_no_real_listener()


if __name__ == "__main__":
    main()
