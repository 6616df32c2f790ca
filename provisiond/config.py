"""Configuration: one TOML file parsed once into frozen, typed dataclasses.

This module owns the configuration schema, its defaults and its validation.
Nothing here runs at import time: :func:`load` is called by the CLI and the
result is passed through constructors. Every error names the key, the bad
value and the fix (:class:`ConfigError`).
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PATH = Path("/etc/provisiond/provisiond.toml")
ENV_VAR = "PROVISIOND_CONFIG"
REPO_ROOT = Path(__file__).resolve().parent.parent


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


@dataclass(frozen=True)
class AgentConfig:
    heartbeat_interval: int = 10
    heartbeat_timeout: int = 60
    kernel_cmdline: str = "console=tty0 console=ttyS0,115200 quiet loglevel=3"


@dataclass(frozen=True)
class IscsiConfig:
    port: int = 3260
    tgt_control_port: int = 0  # tgtd's control socket /var/run/tgtd/socket.N
    iqn_prefix: str = ""  # default: iqn.2025-01.<reversed dns.domain>
    boot_timeout: int = 600  # seconds for a machine to fetch its SAN boot script


@dataclass(frozen=True)
class Config:
    interface: str = ""
    address: ipaddress.IPv4Address = ipaddress.IPv4Address("127.0.0.1")
    http_port: int = 8080
    agent_port: int = 8090  # the agent channel (provisiond/agentd.py); default http_port + 10
    state_dir: Path = Path("/var/lib/provisiond")
    boot_assets_dir: Path = Path("/var/lib/provisiond/boot")
    templates_dir: Path = REPO_ROOT / "templates"
    database_url: str = ""
    log_level: str = "info"
    services: ServicesConfig = field(default_factory=ServicesConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    iscsi: IscsiConfig = field(default_factory=IscsiConfig)
    subnets: tuple[SubnetConfig, ...] = ()
    storages: tuple[StorageConfig, ...] = ()
    source: str = "<defaults>"

    @property
    def http_base(self) -> str:
        return f"http://{self.address}:{self.http_port}"

    @property
    def agent_base(self) -> str:
        """Where agents send register/heartbeat/commands (``provisiond.agent=``)."""
        return f"http://{self.address}:{self.agent_port}"

    @property
    def ssh_key_path(self) -> Path:
        return self.state_dir / "ssh" / "id_ed25519"


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
    "interface", "address", "http_port", "agent_port", "state_dir", "boot_assets_dir",
    "templates_dir", "database_url", "log_level", "services", "dns", "agent", "iscsi",
    "subnet", "storage",
}  # fmt: skip


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
    return Config(
        interface=top.str("interface", ""),
        address=address,
        http_port=http_port,
        agent_port=agent_port,
        state_dir=state_dir,
        boot_assets_dir=assets,
        templates_dir=Path(top.str("templates_dir", str(REPO_ROOT / "templates"))),
        database_url=db_url,
        log_level=top.choice("log_level", "info", ("debug", "info", "warning", "error")),
        services=_services(raw.get("services", {})),
        dns=dns,
        agent=_agent(raw.get("agent", {})),
        iscsi=_iscsi(raw.get("iscsi", {}), dns.domain),
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
    t = _Table(raw, "dns", {"domain", "upstream", "ttl"})
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
    return DnsConfig(domain=domain, upstream=upstream, ttl=t.int("ttl", 60, 0, 86400))


def _agent(raw: dict[str, Any]) -> AgentConfig:
    t = _Table(raw, "agent", {"heartbeat_interval", "heartbeat_timeout", "kernel_cmdline"})
    interval = t.int("heartbeat_interval", 10, 1, 3600)
    timeout = t.int("heartbeat_timeout", 60, 2, 86400)
    if timeout <= interval:
        raise ConfigError(
            "agent.heartbeat_timeout",
            timeout,
            f"must be larger than heartbeat_interval ({interval})",
        )
    cmdline = t.str("kernel_cmdline", AgentConfig.kernel_cmdline)
    if any(ord(c) < 32 for c in cmdline):
        raise ConfigError("agent.kernel_cmdline", cmdline, "must not contain control characters")
    return AgentConfig(interval, timeout, cmdline)


def _iscsi(raw: dict[str, Any], domain: str) -> IscsiConfig:
    t = _Table(raw, "iscsi", {"port", "tgt_control_port", "iqn_prefix", "boot_timeout"})
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
    t = _Table(raw, prefix, {"name", "backend", "path", "exporter", "thin_pool"})
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
    )
