"""The QEMU test bed: a private network namespace, its daemons and machines.

Owns everything one test bed creates and its guaranteed teardown: the
namespace ``<ns>`` with bridge ``br0`` (``<subnet>.1/24`` and ``fd77::1/64``),
tap devices, the IPv6 router-advertisement daemon, provisiond, the anchor
path's dnsmasq + HTTP server, the site's own DHCP server (namespace
``<ns>site`` on ``<subnet>.2``, a veth into ``br0``: for proxyDHCP, where
the client must see two servers on two addresses), QEMU machines (by
pidfile), and loop devices or mounts left under the work directory. Nothing
touches a real interface.

    with Testbed(Path("/tmp/tb")) as tb:
        tb.start_provisiond(config_text)            # or tb.start_anchor(assets, script)
        tb.start_site_dhcp()                        # proxy mode: the site's DHCP server
        vm = tb.boot_vm("vm1", "52:54:00:00:00:01")
        vm.wait_for(r"IDLE-AGENT-UP", timeout=60)

CLI for humans and ``make demo`` (``--ns``, ``--workdir``, ``--subnet``):
``testbed.py up [--site-dhcp]``, ``testbed.py down`` (also cleans a crashed run by name),
``testbed.py boot NAME --mac M [--nic e1000] [--kernel K --initrd I --append A]``.

Stdlib only; import with ``vm-testbed/`` on ``sys.path``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))
from teardown import cleanup, in_ns, ns_inode
from vm import Vm, VmSpec, read_pid, terminate

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
UNDIONLY = Path("/usr/lib/ipxe/undionly.kpxe")
T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, interval: float = 0.1) -> T:
    """The first truthy value of ``predicate()``; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)


def sh(argv: list[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)


def ns_exists(ns: str) -> bool:
    return Path(f"/run/netns/{ns}").exists()


@dataclass
class Anchor:
    """The anchor path: dnsmasq-base DHCP+TFTP and a static HTTP server."""

    url: str  # http://<x.1>:<port>  (also records POSTs: agent registrations)
    http_dir: Path
    record_path: Path

    def registrations(self) -> list[dict]:
        import json

        try:
            lines = self.record_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]


class Testbed:
    """A private network namespace with bridge br0; see the module docstring."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        workdir: Path | str,
        ns_name: str = "tb0",
        subnet: str = "10.77.0",
        venv: Path | str | None = None,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.ns = ns_name
        self.subnet = subnet
        self.address = f"{subnet}.1"
        self.venv = Path(venv) if venv else REPO / ".venv"
        self.run_dir = self.workdir / "run"
        self.vms: list[Vm] = []
        self.site_ns = f"{ns_name}site"  # the site's DHCP server (start_site_dhcp)
        self.site_address = f"{subnet}.2"

    # -- life cycle ------------------------------------------------------

    @property
    def ns_prefix(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.ns}"]

    def __enter__(self) -> Testbed:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> Testbed:
        """Create the namespace (after cleaning leftovers of a crashed run) + RA daemon."""
        cleanup(self.site_ns, self.workdir)
        cleanup(self.ns, self.workdir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._create_network()
            self._start_ra()
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> list[str]:
        """Tear down everything; returns what was removed (for logs)."""
        for vm in self.vms:
            vm.kill()
        self.vms.clear()
        return cleanup(self.site_ns, self.workdir) + cleanup(self.ns, self.workdir)

    def _create_network(self) -> None:
        ns = self.ns
        sh(["ip", "netns", "add", ns])
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        sh(["ip", "-n", ns, "link", "add", "br0", "type", "bridge",
            "stp_state", "0", "forward_delay", "0"])  # fmt: skip
        sh(["ip", "-n", ns, "addr", "add", f"{self.address}/24", "dev", "br0"])
        sh(["ip", "-n", ns, "addr", "add", "fd77::1/64", "dev", "br0", "nodad"])
        sh(["ip", "-n", ns, "link", "set", "br0", "up"])

    def _start_ra(self) -> None:
        """dnsmasq-base as the site router: RAs only (no DNS, no DHCPv4/v6).

        Without RAs iPXE's "Configuring" waits ~13 s for IPv6 autoconf.
        """
        ra = ["--enable-ra", "--dhcp-range=::,constructor:br0,ra-only"]
        self.start_daemon("ra", [*_dnsmasq_base(self.run_dir, "ra"), *ra])

    def start_site_dhcp(self, dhcp_range: tuple[int, int] = (100, 200)) -> str:
        """The site's DHCP server: dnsmasq-base, addresses only, on its own address.

        Runs in namespace ``<ns>site`` on ``<subnet>.2`` (a veth plugged into
        ``br0``), hands out ``<subnet>.lo``-``.hi`` and nothing for booting: no
        boot file, next-server, option 43/60/175. provisiond in proxy mode
        adds the boot information. Returns the server's address.
        """
        site, x = self.site_ns, self.subnet
        sh(["ip", "netns", "add", site])
        sh(["ip", "-n", site, "link", "set", "lo", "up"])
        sh(["ip", "-n", site, "link", "add", "eth0", "type", "veth", "peer", "name", "site0",
            "netns", self.ns])  # fmt: skip
        sh(["ip", "-n", self.ns, "link", "set", "site0", "master", "br0", "up"])
        sh(["ip", "-n", site, "addr", "add", f"{self.site_address}/24", "dev", "eth0"])
        sh(["ip", "-n", site, "link", "set", "eth0", "up"])
        argv = [*_dnsmasq_base(self.run_dir, "site-dhcp", "eth0"), *_addresses(x, dhcp_range)]
        self.start_daemon("site-dhcp", argv, ns=site)
        return self.site_address

    def start_dhcp_capture(self) -> Path:
        """Log every DHCP datagram on br0 (ports 67/68/4011) to ``run/dhcp.jsonl``."""
        out = self.run_dir / "dhcp.jsonl"
        self.start_daemon("dhcp-capture", [sys.executable, str(HERE / "dhcp_capture.py"), "br0",
                                           str(out)])  # fmt: skip
        return out

    def add_tap(self) -> str:
        """A new tap device plugged into br0 (first free tapN)."""
        existing = sh(["ip", "-n", self.ns, "-o", "link", "show"]).stdout
        n = 0
        while f" tap{n}:" in existing or f" tap{n}@" in existing:
            n += 1
        tap = f"tap{n}"
        sh(["ip", "-n", self.ns, "tuntap", "add", "dev", tap, "mode", "tap"])
        sh(["ip", "-n", self.ns, "link", "set", tap, "master", "br0", "up"])
        return tap

    # -- processes in the namespace --------------------------------------

    def run_in_ns(self, argv: list[str], check: bool = True, timeout: float = 60, **kw: Any):
        """Run ``argv`` inside the namespace; CompletedProcess with text output."""
        return sh(self.ns_prefix + argv, check=check, timeout=timeout, **kw)

    def start_daemon(
        self, name: str, argv: list[str], log: Path | None = None, ns: str = ""
    ) -> subprocess.Popen:
        """Start ``argv`` in the namespace (own session), pidfile ``run/<name>.pid``."""
        log = log or self.run_dir / f"{name}.log"
        prefix = ["nsenter", f"--net=/run/netns/{ns}"] if ns else self.ns_prefix
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                prefix + argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (self.run_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
        return proc

    def stop_daemon(self, name: str, timeout: float = 10) -> None:
        pidfile = self.run_dir / f"{name}.pid"
        pid = read_pid(pidfile)
        if pid is not None and in_ns(pid, ns_inode(self.ns)):
            terminate(pid, timeout)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        pidfile.unlink(missing_ok=True)

    def http_status(self, url: str, timeout: float = 2) -> int:
        """HTTP status of GET ``url`` from inside the namespace (0 = no answer)."""
        r = self.run_in_ns(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", str(timeout), url],
            check=False,
            timeout=timeout + 5,
        )
        return int(r.stdout or 0) if r.stdout.strip().isdigit() else 0

    # -- provisiond ------------------------------------------------------

    @property
    def provisiond_bin(self) -> Path:
        return self.venv / "bin" / "provisiond"

    def write_config(self, config_text: str) -> Path:
        tomllib.loads(config_text)  # fail here, not inside the daemon
        cfg = self.workdir / "provisiond.toml"
        cfg.write_text(config_text)
        return cfg

    def provisiond_config(
        self, http_port: int = 8080, heartbeat_interval: int = 10, mode: str = "full"
    ) -> str:
        """A provisiond config for this test bed (state under workdir).

        ``mode = "proxy"``: proxyDHCP only (no range); pair with :meth:`start_site_dhcp`.
        """
        x = self.subnet
        subnet = (
            f'mode = "full"\nrange = ["{x}.100", "{x}.200"]\n'
            f'router = "{self.address}"\ndns = ["{self.address}"]\n'
            if mode == "full"
            else f'mode = "{mode}"\n'
        )
        return f"""\
interface = "br0"
address = "{self.address}"
http_port = {http_port}
state_dir = "{self.workdir / "state"}"

[services]
dhcp = true
tftp = true
dns = true
http = true
dns_port = 53

[dns]
domain = "lab.test"

[agent]
heartbeat_interval = {heartbeat_interval}
heartbeat_timeout = {max(60, heartbeat_interval * 6)}

[[subnet]]
cidr = "{x}.0/24"
{subnet}"""

    def resource_state(self, mac: str) -> str | None:
        """The resource's state in provisiond's SQLite database (None = unknown)."""
        import sqlite3

        db = self.workdir / "state" / "provisiond.db"
        if not db.exists():
            return None
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
                row = con.execute("SELECT state FROM resource WHERE mac = ?", (mac,)).fetchone()
        except sqlite3.Error:
            return None
        return row[0] if row else None

    def start_provisiond(self, config_text: str, timeout: float = 30) -> subprocess.Popen:
        """``provisiond init`` then ``serve`` in the namespace; waits for /healthz 200."""
        raw = tomllib.loads(config_text)
        cfg = self.write_config(config_text)
        prov = str(self.provisiond_bin)
        init = sh([prov, "--config", str(cfg), "init"], check=False, timeout=120)
        if init.returncode != 0:
            raise RuntimeError(f"provisiond init failed:\n{init.stdout}{init.stderr}")
        log = self.workdir / "provisiond.log"
        proc = self.start_daemon("provisiond", [prov, "--config", str(cfg), "serve"], log)
        url = f"http://{raw.get('address', self.address)}:{raw.get('http_port', 8080)}/healthz"

        def healthy() -> bool:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"provisiond serve exited ({proc.returncode}):\n{tail}")
            return self.http_status(url) == 200

        wait_until(healthy, timeout, interval=0.2)
        return proc

    def provisiond_cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """``provisiond --config <workdir>/provisiond.toml ARGS`` in the namespace."""
        cfg = self.workdir / "provisiond.toml"
        return self.run_in_ns([str(self.provisiond_bin), "--config", str(cfg), *args],
                              check=False, timeout=timeout)  # fmt: skip

    # -- the anchor path -------------------------------------------------

    def start_anchor(
        self,
        assets_dir: Path | str,
        script: str,
        http_port: int = 8081,
        dhcp_range: tuple[int, int] = (100, 200),
    ) -> Anchor:
        """dnsmasq-base DHCP + TFTP (undionly.kpxe) and a static HTTP server.

        ``assets_dir``'s files (kernel, initrd) and ``script`` (as ``boot.ipxe``)
        are served at ``http://<x.1>:<http_port>/``; iPXE clients (option 175
        or user class "iPXE") get that script's URL, other PXE ROMs get
        ``undionly.kpxe`` by TFTP. POSTs to the HTTP server are recorded.
        """
        base = self.workdir / "anchor"
        http_dir, tftp_dir = base / "http", base / "tftp"
        for d in (http_dir, tftp_dir):
            d.mkdir(parents=True, exist_ok=True)
        for f in Path(assets_dir).resolve().iterdir():
            link = http_dir / f.name
            link.unlink(missing_ok=True)
            link.symlink_to(f)
        (http_dir / "boot.ipxe").write_text(script)
        (tftp_dir / "undionly.kpxe").write_bytes(UNDIONLY.read_bytes())
        url = f"http://{self.address}:{http_port}"
        dhcp = [
            *_addresses(self.subnet, dhcp_range),
            "--enable-tftp", f"--tftp-root={tftp_dir}",
            "--dhcp-match=set:ipxe,175",
            "--dhcp-userclass=set:ipxe,iPXE",
            f"--dhcp-boot=tag:!ipxe,undionly.kpxe,,{self.address}",
            f"--dhcp-boot=tag:ipxe,{url}/boot.ipxe",
            "--dhcp-option=tag:ipxe,encap:175,176,1",  # iPXE: no ProxyDHCP wait
        ]  # fmt: skip
        self.start_daemon("anchor-dnsmasq", [*_dnsmasq_base(self.run_dir, "anchor-dnsmasq"), *dhcp])
        record = base / "registrations.jsonl"
        record.unlink(missing_ok=True)
        self.start_daemon("anchor-http", [
            sys.executable, str(HERE / "anchor_http.py"), "--bind", self.address,
            "--port", str(http_port), "--dir", str(http_dir), "--record", str(record),
        ])  # fmt: skip
        wait_until(lambda: self.http_status(f"{url}/boot.ipxe") == 200, 15, interval=0.1)
        return Anchor(url=url, http_dir=http_dir, record_path=record)

    def stop_anchor(self) -> None:
        self.stop_daemon("anchor-http")
        self.stop_daemon("anchor-dnsmasq")

    # -- machines --------------------------------------------------------

    def boot_vm(
        self,
        name: str,
        mac: str,
        nic: str = "virtio-net-pci",
        mem: int = 512,
        smp: int = 1,
        disks: list[str] | tuple[str, ...] = (),
        disk_if: str = "virtio",
        boot: str = "n",
        kernel: str = "",
        initrd: str = "",
        append: str = "",
        reboot: bool = False,
        uefi: bool = False,
        nic_rom: bool = True,
        fw_cfg: tuple[str, ...] = (),
        qmp: bool = False,
        extra: tuple[str, ...] = (),
    ) -> Vm:
        """Start a TCG QEMU machine on a new tap of br0 (see :class:`vm.VmSpec`).

        ``qmp=True`` gives it a QMP socket (``Vm.qmp_path``) for the ``qemu`` power driver.
        """
        vm_dir = self.workdir / "vms"
        vm_dir.mkdir(parents=True, exist_ok=True)
        spec = VmSpec(name=name, mac=mac, tap=self.add_tap(), nic=nic, mem=mem, smp=smp,
                      disks=tuple(disks), disk_if=disk_if, boot=boot, kernel=str(kernel),
                      initrd=str(initrd), append=append, reboot=reboot, nic_rom=nic_rom,
                      qmp=qmp,
                      extra=(*(("-bios", OVMF) if uefi else ()),
                             *(a for f in fw_cfg for a in ("-fw_cfg", f)), *extra))  # fmt: skip
        vm = Vm(spec, vm_dir).start(self.ns_prefix)
        self.vms.append(vm)
        return vm


OVMF = "/usr/share/ovmf/OVMF.fd"  # Debian package ovmf: UEFI firmware for QEMU


def _dnsmasq_base(run_dir: Path, name: str, interface: str = "br0") -> list[str]:
    """dnsmasq-base flags shared by our instances: foreground, one interface, no DNS."""
    return [
        "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
        f"--interface={interface}", "--bind-interfaces", "--except-interface=lo", "--user=root",
        f"--pid-file={run_dir / name}.dnsmasq-pid", f"--log-facility={run_dir / name}.log",
        f"--dhcp-leasefile={run_dir / name}.leases",
    ]  # fmt: skip


def _addresses(subnet: str, dhcp_range: tuple[int, int]) -> list[str]:
    """dnsmasq-base flags that hand out ``<subnet>.lo``-``.hi`` quickly (1 h leases)."""
    lo, hi = dhcp_range
    return [
        f"--dhcp-range={subnet}.{lo},{subnet}.{hi},255.255.255.0,1h",
        "--dhcp-authoritative",
        "--no-ping",  # no ICMP probe before an OFFER (~3 s per new client)
        "--log-dhcp",
    ]


# -- CLI -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="QEMU test bed (network namespace + machines)")
    ap.add_argument("--ns", default="tb0")
    ap.add_argument("--workdir", default="")
    ap.add_argument("--subnet", default="10.77.0")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="create namespace, bridge and RA daemon; leave them running")
    up.add_argument(
        "--site-dhcp",
        action="store_true",
        help="also run the site's DHCP server (addresses only) on <subnet>.2",
    )
    sub.add_parser("down", help="tear down (also leftovers of a crashed run)")
    b = sub.add_parser("boot", help="boot a machine in a test bed made by 'up'")
    b.add_argument("name")
    b.add_argument("--mac", required=True)
    b.add_argument("--nic", default="virtio-net-pci", choices=["virtio-net-pci", "e1000"])
    b.add_argument("--mem", type=int, default=512)
    b.add_argument("--disk", action="append", default=[], help="blank disk size, e.g. 2G")
    b.add_argument("--kernel", default="")
    b.add_argument("--initrd", default="")
    b.add_argument("--append", default="")
    b.add_argument("--follow", action="store_true", help="print the console until Ctrl-C")
    args = ap.parse_args(argv)
    tb = Testbed(args.workdir or f"/tmp/testbed-{args.ns}", args.ns, args.subnet)
    if args.cmd == "up":
        tb.up()
        print(f"testbed {tb.ns} up: br0 {tb.address}/24, workdir {tb.workdir}")
        if args.site_dhcp:
            print(f"site DHCP server (addresses only): {tb.start_site_dhcp()} in {tb.site_ns}")
    elif args.cmd == "down":
        print("\n".join(tb.down()) or "nothing to remove")
    elif args.cmd == "boot":
        if not ns_exists(tb.ns):
            sys.exit(f"no namespace {tb.ns}: run '{sys.argv[0]} up' first")
        vm = tb.boot_vm(args.name, args.mac, nic=args.nic, mem=args.mem, disks=args.disk,
                        kernel=args.kernel, initrd=args.initrd, append=args.append)  # fmt: skip
        print(f"{vm.name}: pid file {vm.pidfile}, console {vm.log_path}")
        if args.follow:
            _follow(vm)
    return 0


def _follow(vm: Vm) -> None:
    seen = 0
    try:
        while vm.alive():
            lines = vm.console_lines()
            for t, text in lines[seen:]:
                print(f"[{t:8.3f}] {text}", flush=True)
            seen = len(lines)
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
