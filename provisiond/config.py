"""Configuration: one TOML file parsed once into frozen, typed dataclasses.

This module owns the configuration schema, its defaults and its validation.
Nothing here runs at import time: :func:`load` is called by the CLI and the
result is passed through constructors. Every error names the key, the bad
value and the fix (:class:`ConfigError`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisiond import shipped
from pxe.boot import script_problem

DEFAULT_PATH = Path("/etc/provisiond/provisiond.toml")
ENV_VAR = "PROVISIOND_CONFIG"


class ConfigError(ValueError):
    """A configuration file is unusable; the message names key, value and fix."""

    def __init__(self, key: str, value: Any, fix: str) -> None:
        self.key, self.value, self.fix = key, value, fix
        super().__init__(f"{key} = {value!r}: {fix}")


@dataclass(frozen=True)
class SubnetConfig:
    cidr: ipaddress.IPv4Network
    mode: str  # "full" | "proxy"
    range_start: ipaddress.IPv4Address | None = None
    range_end: ipaddress.IPv4Address | None = None
    router: ipaddress.IPv4Address | None = None
    dns: tuple[ipaddress.IPv4Address, ...] = ()
    domain: str = ""
    lease_time: int = 3600


@dataclass(frozen=True)
class StorageConfig:
    name: str
    backend: str  # "file" | "reflink" | "lvm"
    path: str  # directory (file, reflink) or volume group (lvm)
    exporter: str = "auto"  # "auto" | "tgt" | "lio"
    thin_pool: str = ""
    # A storage host driven over SSH (empty host: this machine). See README "Storage hosts".
    host: str = ""  # address of the storage host
    user: str = "root"
    port: int = 22
    key: str = ""  # private key for the login; empty = the server's ssh_key
    host_key: str = ""  # "ssh-ed25519 AAAA…"; empty = pin on first use (storage-hostkeys.json)
    devices: tuple[str, ...] = ()  # block devices the VG is created on when missing (lvm)
    thin_pool_size: int = 0  # bytes; the thin pool is created with this size when missing
    # liveness of a storage host's SSH connection (storage.ssh): probed every alive_interval
    # seconds, down when a probe is not answered within alive_timeout seconds
    alive_interval: int = 5
    alive_timeout: int = 30  # a busy real host (or a TCG VM) can take >10 s to open a channel


@dataclass(frozen=True)
class ServicesConfig:
    dhcp: bool = True
    tftp: bool = True
    dns: bool = True
    http: bool = True
    dhcp_port: int = 67
    proxy_port: int = 4011
    tftp_port: int = 69
    dns_port: int = 53


@dataclass(frozen=True)
class DnsConfig:
    domain: str = "provisiond.lan"
    upstream: str = ""  # "ip" or "ip:port"; empty = REFUSED for foreign names
    ttl: int = 60
    # forwarding is for the [[subnet]] CIDRs, loopback and these networks only
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    rate_limit: int = 50  # UDP responses per second per client /24 (RRL); 0 = off
    rate_limit_slip: int = 2  # every Nth limited response is sent truncated; 0 = drop all
    max_udp_size: int = 1232  # largest UDP reply, whatever EDNS offers (DNS Flag Day 2020)


@dataclass(frozen=True)
class AgentConfig:
    heartbeat_interval: int = 10
    heartbeat_timeout: int = 60
    kernel_cmdline: str = "console=tty0 console=ttyS0,115200 quiet loglevel=3"
    # seconds after a DHCP boot during which its address may fetch the boot script
    boot_window: int = 300
    # "boot": the first registration of a boot pins that boot's host key (the initrd
    # makes a new key every boot); "resource": one key for the machine's life
    hostkey_pinning: str = "boot"
    # seconds a queued agent command may wait for its agent before it and its job fail
    # (provisiond/pickup.py): the agent was alive when it was queued / it must boot first
    pickup_timeout: int = 300
    pickup_boot_timeout: int = 900


@dataclass(frozen=True)
class IscsiConfig:
    port: int = 3260
    tgt_control_port: int = 0  # tgtd's control socket /var/run/tgtd/socket.N
    iqn_prefix: str = ""  # default: iqn.2025-01.<reversed dns.domain>
    boot_timeout: int = 600  # seconds for a machine to fetch its SAN boot script
    # SAN script fetches after which a start (or an active appliance) is a boot loop: failed
    max_script_fetches: int = 6
    reconcile_interval: int = 30  # seconds between checks that every export still exists
    boot_settle: int = 20  # seconds without a new script fetch after the login: booted


@dataclass(frozen=True)
class LocalConfig:
    """``[local]``: how a ``local`` deploy proves the written disk booted (localdeploy.py)."""

    boot_timeout: int = 600  # seconds from the agent's reboot to the booted OS's proof
    max_script_fetches: int = 6  # local-boot script fetches without the OS up: a boot loop
    confirm_boot: bool = True  # wait for the booted OS (False: active once written and verified)


@dataclass(frozen=True)
class LeaseConfig:
    """How this instance proves it is alive to the others on one database."""

    heartbeat_interval: int = 10  # seconds between renewals of the instance's lease
    expiry: int = 3  # missed heartbeats after which the lease (and its work) is given up

    @property
    def seconds(self) -> int:
        return self.heartbeat_interval * self.expiry


#: an instance (rack) identity: what a lock, a lease and an owner column hold
INSTANCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def default_instance() -> str:
    """The host name's first label when it is a valid identity, else "default"."""
    name = socket.gethostname().split(".")[0]
    return name if INSTANCE_NAME.match(name) else "default"


@dataclass(frozen=True)
class ImagesConfig:
    """Where image imports may read from (issue 11: no host files, no internal URLs)."""

    import_dirs: tuple[Path, ...] = ()  # server folders whose regular files may be imported
    # networks an import URL may reach although loopback, link-local or the server's own
    allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


@dataclass(frozen=True)
class HttpConfig:
    """HTTPS for the UI and API; the boot path (iPXE, agent) stays on plain ``http_port``."""

    tls: bool = False
    https_port: int = 8443
    tls_cert: Path | None = None  # None: <state_dir>/tls/cert.pem made by `provisiond init`
    tls_key: Path | None = None


@dataclass(frozen=True)
class PowerConfig:
    """Power-state polling of resources with a power driver (provisiond.powerctl)."""

    interval: int = 60  # seconds between sweeps; 0 = no polling
    timeout: int = 10  # seconds one BMC call may take
    concurrency: int = 32  # BMCs asked at once during a sweep


@dataclass(frozen=True)
class HaConfig:
    """``[ha]``: the N-to-1 failover watcher (provisiond.hawatch)."""

    enabled: bool = True
    interval: int = 5  # seconds between sweeps (power polls, heartbeat checks)
    timeout: int = 30  # seconds a sign of death must last before a failover
    hold_down: int = 600  # seconds after a failover before the same appliance fails over again
    power_timeout: int = 5  # seconds one power call may take
    notify_command: str = ""  # run (argv, no shell) with HA_* variables on every HA event
    notify_url: str = ""  # POSTed a JSON body on every HA event


@dataclass(frozen=True)
class Config:
    instance: str = "default"
    interface: str = ""
    address: ipaddress.IPv4Address = ipaddress.IPv4Address("127.0.0.1")
    http_port: int = 8080
    agent_port: int = 8090  # the agent channel (provisiond/agentd.py); default http_port + 10
    state_dir: Path = Path("/var/lib/provisiond")
    boot_assets_dir: Path = Path("/var/lib/provisiond/boot")
    templates_dir: Path = field(default_factory=shipped.templates_dir)
    database_url: str = ""
    log_level: str = "info"
    services: ServicesConfig = field(default_factory=ServicesConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    iscsi: IscsiConfig = field(default_factory=IscsiConfig)
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    power: PowerConfig = field(default_factory=PowerConfig)
    ha: HaConfig = field(default_factory=HaConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    subnets: tuple[SubnetConfig, ...] = ()
    storages: tuple[StorageConfig, ...] = ()
    source: str = "<defaults>"

    @property
    def http_base(self) -> str:
        return f"http://{self.address}:{self.http_port}"

    @property
    def ui_base(self) -> str:
        """Where operators reach the UI and API: HTTPS when ``[http] tls`` is on."""
        if self.http.tls:
            return f"https://{self.address}:{self.http.https_port}"
        return self.http_base

    @property
    def agent_base(self) -> str:
        """Where agents send register/heartbeat/commands (``provisiond.agent=``)."""
        return f"http://{self.address}:{self.agent_port}"

    @property
    def ssh_key_path(self) -> Path:
        return self.state_dir / "ssh" / "id_ed25519"

    @property
    def tls_cert_path(self) -> Path:
        return self.http.tls_cert or self.state_dir / "tls" / "cert.pem"

    @property
    def tls_key_path(self) -> Path:
        return self.http.tls_key or self.state_dir / "tls" / "key.pem"

    @property
    def sqlite_path(self) -> Path | None:
        """The database file when the database is SQLite on disk, else None."""
        if not self.database_url.startswith("sqlite:///"):
            return None
        path = self.database_url[len("sqlite:///") :]
        return Path(path) if path and path != ":memory:" else None


def resolve_path(flag: str | None) -> Path:
    """--config beats $PROVISIOND_CONFIG beats the default path."""
    if flag:
        return Path(flag)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return DEFAULT_PATH


def load(path: Path) -> Config:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            "config", str(path), "file not found; create it or pass --config / $PROVISIOND_CONFIG"
        )
    return parse(text, source=str(path))


def parse(text: str, source: str = "<string>") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", source, f"not valid TOML ({exc}); fix the syntax")
    return _build(raw, source)


# ---------------------------------------------------------------------------
# typed readers: each names the key and the fix


class _Table:
    def __init__(self, raw: dict[str, Any], prefix: str, known: set[str]) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(prefix, raw, "must be a table")
        for key in raw:
            if key not in known:
                raise ConfigError(
                    self._k(prefix, key),
                    raw[key],
                    f"unknown key; known keys are {', '.join(sorted(known))}",
                )
        self.raw, self.prefix = raw, prefix

    @staticmethod
    def _k(prefix: str, key: str) -> str:
        return f"{prefix}.{key}" if prefix else key

    def key(self, key: str) -> str:
        return self._k(self.prefix, key)

    def str(self, key: str, default: str) -> str:
        value = self.raw.get(key, default)
        if not isinstance(value, str):
            raise ConfigError(self.key(key), value, "must be a string")
        return value

    def bool(self, key: str, default: bool) -> bool:
        value = self.raw.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(self.key(key), value, "must be true or false")
        return value

    def int(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self.raw.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ConfigError(self.key(key), value, f"must be an integer from {lo} to {hi}")
        return value

    def port(self, key: str, default: int) -> int:
        return self.int(key, default, 1, 65535)

    def ip(self, key: str, default: str | None) -> ipaddress.IPv4Address | None:
        value = self.raw.get(key, default)
        if value is None:
            return None
        try:
            return ipaddress.IPv4Address(value)
        except (ipaddress.AddressValueError, ValueError, TypeError):
            raise ConfigError(self.key(key), value, "must be an IPv4 address like 10.0.0.1")

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.str(key, default)
        if value not in choices:
            raise ConfigError(self.key(key), value, f"must be one of {', '.join(choices)}")
        return value

    def tables(self, key: str) -> list[dict[str, Any]]:
        value = self.raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(self.key(key), value, f"write it as [[{key}]] tables")
        return value


_TOP = {
    "instance", "lease", "interface", "address", "http_port", "agent_port", "state_dir",
    "boot_assets_dir", "templates_dir", "database_url", "log_level", "services", "dns", "agent",
    "iscsi", "subnet", "storage", "images", "http", "ha",
}  # fmt: skip
_TOP.add("power")
_TOP.add("local")


def _build(raw: dict[str, Any], source: str) -> Config:
    top = _Table(raw, "", _TOP)
    state_dir = Path(top.str("state_dir", "/var/lib/provisiond"))
    if not state_dir.is_absolute():
        raise ConfigError("state_dir", str(state_dir), "must be an absolute path")
    assets = Path(top.str("boot_assets_dir", str(state_dir / "boot")))
    db_url = top.str("database_url", "") or f"sqlite:///{state_dir / 'provisiond.db'}"
    if not db_url.startswith(("sqlite:", "postgresql")):
        raise ConfigError("database_url", db_url, "use sqlite:///PATH or postgresql://...")
    address = top.ip("address", "127.0.0.1")
    http_port = top.port("http_port", 8080)
    agent_port = top.int("agent_port", 0, 0, 65535) or min(http_port + 10, 65535)
    if agent_port == http_port:
        raise ConfigError("agent_port", agent_port, f"must differ from http_port ({http_port})")
    subnets = tuple(_subnet(t, f"subnet[{i}]") for i, t in enumerate(top.tables("subnet")))
    storages = tuple(_storage(t, f"storage[{i}]") for i, t in enumerate(top.tables("storage")))
    dns = _dns(raw.get("dns", {}))
    names = [s.name for s in storages]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError("storage.name", name, "storage names must be unique")
    instance = top.str("instance", "") or default_instance()
    if not INSTANCE_NAME.match(instance):
        raise ConfigError(
            "instance", instance, "must be 1-63 letters, digits, '.', '-' or '_' (e.g. \"r1\")"
        )
    http = _http(raw.get("http", {}))
    if http.tls and http.https_port == top.port("http_port", 8080):
        raise ConfigError("http.https_port", http.https_port, "must differ from http_port")
    return Config(
        instance=instance,
        interface=top.str("interface", ""),
        address=address,
        http_port=http_port,
        agent_port=agent_port,
        state_dir=state_dir,
        boot_assets_dir=assets,
        templates_dir=Path(top.str("templates_dir", "") or shipped.templates_dir()),
        database_url=db_url,
        log_level=top.choice("log_level", "info", ("debug", "info", "warning", "error")),
        services=_services(raw.get("services", {})),
        dns=dns,
        agent=_agent(raw.get("agent", {})),
        iscsi=_iscsi(raw.get("iscsi", {}), dns.domain),
        lease=_lease(raw.get("lease", {})),
        images=_images(raw.get("images", {}), state_dir),
        http=http,
        power=_power(raw.get("power", {})),
        ha=_ha(raw.get("ha", {})),
        local=_local(raw.get("local", {})),
        subnets=subnets,
        storages=storages,
        source=source,
    )


def _services(raw: dict[str, Any]) -> ServicesConfig:
    t = _Table(raw, "services", {f.name for f in ServicesConfig.__dataclass_fields__.values()})
    d = ServicesConfig()
    return ServicesConfig(
        dhcp=t.bool("dhcp", d.dhcp),
        tftp=t.bool("tftp", d.tftp),
        dns=t.bool("dns", d.dns),
        http=t.bool("http", d.http),
        dhcp_port=t.port("dhcp_port", d.dhcp_port),
        proxy_port=t.port("proxy_port", d.proxy_port),
        tftp_port=t.port("tftp_port", d.tftp_port),
        dns_port=t.port("dns_port", d.dns_port),
    )


def _dns(raw: dict[str, Any]) -> DnsConfig:
    t = _Table(
        raw,
        "dns",
        {"domain", "upstream", "ttl", "allow", "rate_limit", "rate_limit_slip", "max_udp_size"},
    )
    domain = t.str("domain", DnsConfig.domain).strip(".").lower()
    if not domain or any(not label or len(label) > 63 for label in domain.split(".")):
        raise ConfigError("dns.domain", domain, "must be a DNS name like lab.example")
    upstream = t.str("upstream", "")
    if upstream:
        host, _, port = upstream.partition(":")
        try:
            ipaddress.ip_address(host)
            if port and not 0 < int(port) < 65536:
                raise ValueError
        except ValueError:
            raise ConfigError("dns.upstream", upstream, "must be IP or IP:PORT, e.g. 10.0.0.53")
    return DnsConfig(
        domain=domain,
        upstream=upstream,
        ttl=t.int("ttl", 60, 0, 86400),
        allow=_networks(t, "allow"),
        rate_limit=t.int("rate_limit", DnsConfig.rate_limit, 0, 100_000),
        rate_limit_slip=t.int("rate_limit_slip", DnsConfig.rate_limit_slip, 0, 10),
        max_udp_size=t.int("max_udp_size", DnsConfig.max_udp_size, 512, 4096),
    )


def _networks(t: _Table, key: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    value = t.raw.get(key, [])
    fix = 'must be a list of networks or addresses, like ["10.1.0.0/16", "192.0.2.7"]'
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(t.key(key), value, fix)
    try:
        return tuple(ipaddress.ip_network(v, strict=True) for v in value)
    except ValueError as exc:
        raise ConfigError(t.key(key), value, f"{fix} ({exc})")


def _images(raw: dict[str, Any], state_dir: Path) -> ImagesConfig:
    t = _Table(raw, "images", {"import_dirs", "allow_networks"})
    dirs = raw.get("import_dirs", [])
    if not isinstance(dirs, list) or not all(isinstance(d, str) and d for d in dirs):
        raise ConfigError("images.import_dirs", dirs, 'must be a list like ["/srv/images"]')
    paths = tuple(Path(d) for d in dirs)
    for p in paths:
        if not p.is_absolute():
            raise ConfigError("images.import_dirs", str(p), "every folder must be an absolute path")
        if p == state_dir or state_dir in p.parents:
            raise ConfigError(
                "images.import_dirs", str(p), f"must not be inside state_dir ({state_dir})"
            )
    nets = raw.get("allow_networks", [])
    if not isinstance(nets, list):
        raise ConfigError(t.key("allow_networks"), nets, 'must be a list like ["10.0.0.5/32"]')
    try:
        allow = tuple(ipaddress.ip_network(n, strict=True) for n in nets)
    except (ValueError, TypeError) as exc:
        raise ConfigError(t.key("allow_networks"), nets, f"every entry must be a network ({exc})")
    return ImagesConfig(import_dirs=paths, allow_networks=allow)


def _http(raw: dict[str, Any]) -> HttpConfig:
    t = _Table(raw, "http", {"tls", "https_port", "tls_cert", "tls_key"})
    cert, key = t.str("tls_cert", ""), t.str("tls_key", "")
    if bool(cert) != bool(key):
        raise ConfigError(
            "http.tls_cert" if not cert else "http.tls_key",
            "",
            "set both tls_cert and tls_key, or neither (then `provisiond init` makes a "
            "self-signed pair)",
        )
    for key_name, value in (("tls_cert", cert), ("tls_key", key)):
        if value and not Path(value).is_absolute():
            raise ConfigError(t.key(key_name), value, "must be an absolute path")
    return HttpConfig(
        tls=t.bool("tls", False),
        https_port=t.port("https_port", 8443),
        tls_cert=Path(cert) if cert else None,
        tls_key=Path(key) if key else None,
    )


def _agent(raw: dict[str, Any]) -> AgentConfig:
    t = _Table(
        raw,
        "agent",
        {"heartbeat_interval", "heartbeat_timeout", "kernel_cmdline", "boot_window",
         "hostkey_pinning", "pickup_timeout", "pickup_boot_timeout"},
    )  # fmt: skip
    interval = t.int("heartbeat_interval", 10, 1, 3600)
    timeout = t.int("heartbeat_timeout", 60, 2, 86400)
    if timeout <= interval:
        raise ConfigError(
            "agent.heartbeat_timeout",
            timeout,
            f"must be larger than heartbeat_interval ({interval})",
        )
    cmdline = t.str("kernel_cmdline", AgentConfig.kernel_cmdline)
    problem = script_problem(cmdline)
    if problem:
        raise ConfigError("agent.kernel_cmdline", cmdline, problem)
    return AgentConfig(
        interval,
        timeout,
        cmdline,
        boot_window=t.int("boot_window", 300, 10, 86400),
        hostkey_pinning=t.choice("hostkey_pinning", "boot", ("boot", "resource")),
        pickup_timeout=t.int("pickup_timeout", 300, 5, 86400),
        pickup_boot_timeout=t.int("pickup_boot_timeout", 900, 5, 86400),
    )


def _ha(raw: dict[str, Any]) -> HaConfig:
    t = _Table(raw, "ha", set(HaConfig.__dataclass_fields__))
    d = HaConfig()
    url = t.str("notify_url", "")
    if url and not url.startswith(("http://", "https://")):
        raise ConfigError("ha.notify_url", url, "must be an http:// or https:// URL")
    command = t.str("notify_command", "")
    if command:
        import shlex

        try:
            shlex.split(command)
        except ValueError as exc:
            raise ConfigError("ha.notify_command", command, f"cannot be split into words: {exc}")
    return HaConfig(
        enabled=t.bool("enabled", d.enabled),
        interval=t.int("interval", d.interval, 1, 3600),
        timeout=t.int("timeout", d.timeout, 2, 86400),
        hold_down=t.int("hold_down", d.hold_down, 0, 7 * 86400),
        power_timeout=t.int("power_timeout", d.power_timeout, 1, 120),
        notify_command=command,
        notify_url=url,
    )


def _lease(raw: dict[str, Any]) -> LeaseConfig:
    t = _Table(raw, "lease", {"heartbeat_interval", "expiry"})
    d = LeaseConfig()
    return LeaseConfig(
        heartbeat_interval=t.int("heartbeat_interval", d.heartbeat_interval, 1, 3600),
        expiry=t.int("expiry", d.expiry, 2, 100),
    )


def _local(raw: dict[str, Any]) -> LocalConfig:
    t = _Table(raw, "local", {"boot_timeout", "max_script_fetches", "confirm_boot"})
    d = LocalConfig()
    return LocalConfig(
        confirm_boot=t.bool("confirm_boot", d.confirm_boot),
        boot_timeout=t.int("boot_timeout", d.boot_timeout, 10, 86400),
        max_script_fetches=t.int("max_script_fetches", d.max_script_fetches, 2, 1000),
    )


def _iscsi(raw: dict[str, Any], domain: str) -> IscsiConfig:
    keys = {"port", "tgt_control_port", "iqn_prefix", "boot_timeout"}
    keys |= {"max_script_fetches", "reconcile_interval", "boot_settle"}
    t = _Table(raw, "iscsi", keys)
    default_prefix = "iqn.2025-01." + ".".join(reversed(domain.split(".")))
    prefix = t.str("iqn_prefix", default_prefix).lower()
    parts = prefix.split(".")
    if (
        len(parts) < 3
        or parts[0] != "iqn"
        or len(parts[1]) != 7
        or ":" in prefix
        or not all(p and p.replace("-", "").isalnum() for p in parts)
    ):
        raise ConfigError(
            "iscsi.iqn_prefix", prefix, "must look like iqn.YYYY-MM.reversed.domain (RFC 3720)"
        )
    return IscsiConfig(
        port=t.port("port", 3260),
        tgt_control_port=t.int("tgt_control_port", 0, 0, 1000),
        iqn_prefix=prefix,
        boot_timeout=t.int("boot_timeout", 600, 10, 86400),
        max_script_fetches=t.int("max_script_fetches", 6, 2, 1000),
        reconcile_interval=t.int("reconcile_interval", 30, 1, 3600),
        boot_settle=t.int("boot_settle", 20, 0, 600),
    )


def _subnet(raw: dict[str, Any], prefix: str) -> SubnetConfig:
    t = _Table(raw, prefix, {"cidr", "mode", "range", "router", "dns", "domain", "lease_time"})
    if "cidr" not in raw:
        raise ConfigError(t.key("cidr"), None, 'is required, e.g. cidr = "10.0.0.0/24"')
    try:
        cidr = ipaddress.IPv4Network(raw["cidr"], strict=True)
    except (ValueError, TypeError) as exc:
        raise ConfigError(t.key("cidr"), raw["cidr"], f"must be an IPv4 network ({exc})")
    mode = t.choice("mode", "full", ("full", "proxy"))
    start = end = None
    rng = raw.get("range")
    if mode == "full":
        if not (isinstance(rng, list) and len(rng) == 2):
            raise ConfigError(
                t.key("range"), rng, 'full mode needs range = ["FIRST", "LAST"] inside cidr'
            )
        try:
            start, end = (ipaddress.IPv4Address(a) for a in rng)
        except (ValueError, TypeError):
            raise ConfigError(t.key("range"), rng, "both ends must be IPv4 addresses")
        if start not in cidr or end not in cidr or start > end:
            raise ConfigError(t.key("range"), rng, f"must be FIRST <= LAST, both inside {cidr}")
    elif rng is not None:
        raise ConfigError(t.key("range"), rng, "proxy mode hands out no addresses; remove range")
    router = t.ip("router", None)
    if router is not None and router not in cidr:
        raise ConfigError(t.key("router"), str(router), f"must be inside {cidr}")
    dns_raw = raw.get("dns", [])
    if not isinstance(dns_raw, list):
        raise ConfigError(t.key("dns"), dns_raw, 'must be a list like ["10.0.0.1"]')
    try:
        dns = tuple(ipaddress.IPv4Address(a) for a in dns_raw)
    except (ValueError, TypeError):
        raise ConfigError(t.key("dns"), dns_raw, "every entry must be an IPv4 address")
    return SubnetConfig(
        cidr=cidr,
        mode=mode,
        range_start=start,
        range_end=end,
        router=router,
        dns=dns,
        domain=t.str("domain", ""),
        lease_time=t.int("lease_time", 3600, 60, 86400 * 30),
    )


def _storage(raw: dict[str, Any], prefix: str) -> StorageConfig:
    t = _Table(raw, prefix, {"name", "backend", "path", "exporter", "thin_pool", "host", "user",
                             "port", "key", "host_key", "devices", "thin_pool_size",
                             "alive_interval", "alive_timeout"})  # fmt: skip
    name = t.str("name", "")
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(t.key("name"), name, "must be a non-empty name of letters, digits, - _")
    path = t.str("path", "")
    if not path:
        raise ConfigError(t.key("path"), path, "is required (a directory, or a VG for lvm)")
    return StorageConfig(
        name=name,
        backend=t.choice("backend", "file", ("file", "reflink", "lvm")),
        path=path,
        exporter=t.choice("exporter", "auto", ("auto", "tgt", "lio")),
        thin_pool=t.str("thin_pool", ""),
        **_storage_host(t),
    )


def _storage_host(t: _Table) -> dict[str, Any]:
    """The storage-host keys of a [[storage]] table (host, user, port, key, host_key, …)."""
    host = t.str("host", "")
    devices = t.raw.get("devices", [])
    if not isinstance(devices, list) or not all(
        isinstance(d, str) and d.startswith("/dev/") for d in devices
    ):
        raise ConfigError(t.key("devices"), devices, 'must be a list like ["/dev/vdb"]')
    host_key = t.str("host_key", "")
    if host_key and len(host_key.split()) < 2:
        raise ConfigError(t.key("host_key"), host_key, 'must be a line like "ssh-ed25519 AAAA…"')
    backend = t.raw.get("backend", "file")
    if host and backend not in ("lvm",):
        raise ConfigError(t.key("host"), host, 'a storage host needs backend = "lvm"')
    if not host and (devices or host_key):
        raise ConfigError(t.key("host"), host, "devices and host_key need a storage host")
    return {
        "host": host,
        "user": t.str("user", "root"),
        "port": t.port("port", 22),
        "key": t.str("key", ""),
        "host_key": host_key,
        "devices": tuple(devices),
        "thin_pool_size": t.int("thin_pool_size", 0, 0, 1 << 50),
        "alive_interval": t.int("alive_interval", 5, 1, 300),
        "alive_timeout": t.int("alive_timeout", 30, 1, 300),
    }


def _power(raw: dict[str, Any]) -> PowerConfig:
    t = _Table(raw, "power", {"interval", "timeout", "concurrency"})
    d = PowerConfig()
    return PowerConfig(
        interval=t.int("interval", d.interval, 0, 86400),
        timeout=t.int("timeout", d.timeout, 1, 300),
        concurrency=t.int("concurrency", d.concurrency, 1, 1024),
    )
