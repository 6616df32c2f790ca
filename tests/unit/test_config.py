"""Configuration: table-driven good and bad files, each bad one with its message."""

from __future__ import annotations

import ipaddress

import pytest

from provisiond import config as cfg

GOOD = """
interface = "br0"
address = "10.77.0.1"
http_port = 8081
state_dir = "/srv/pd"
[dns]
domain = "Lab.Test."
upstream = "10.0.0.53:5353"
[agent]
heartbeat_interval = 5
heartbeat_timeout = 30
[[subnet]]
cidr = "10.77.0.0/24"
range = ["10.77.0.100", "10.77.0.200"]
router = "10.77.0.1"
dns = ["10.77.0.1"]
[[subnet]]
cidr = "192.168.5.0/24"
mode = "proxy"
[[storage]]
name = "fast"
backend = "reflink"
path = "/srv/images"
"""


def test_good_file_parses_into_typed_values():
    c = cfg.parse(GOOD)
    assert c.interface == "br0"
    assert c.address == ipaddress.IPv4Address("10.77.0.1")
    assert c.http_base == "http://10.77.0.1:8081"
    assert c.agent_base == "http://10.77.0.1:8091"  # agent_port defaults to http_port + 10
    assert str(c.boot_assets_dir) == "/srv/pd/boot"
    assert c.database_url == "sqlite:////srv/pd/provisiond.db"
    assert c.dns.domain == "lab.test" and c.dns.upstream == "10.0.0.53:5353"
    assert c.agent.heartbeat_timeout == 30
    full, proxy = c.subnets
    assert full.mode == "full" and str(full.range_start) == "10.77.0.100"
    assert proxy.mode == "proxy" and proxy.range_start is None
    assert c.storages[0].backend == "reflink" and c.storages[0].exporter == "auto"


def test_defaults_need_no_file_content():
    c = cfg.parse("")
    assert c.http_port == 8080 and c.subnets == () and c.services.dhcp


def test_agent_port_can_be_set():
    assert cfg.parse("agent_port = 9000").agent_base == "http://127.0.0.1:9000"


def test_config_is_frozen():
    c = cfg.parse("")
    with pytest.raises(AttributeError):
        c.http_port = 1  # type: ignore[misc]


BAD = [
    ("http_port = 0", "http_port", "integer from 1 to 65535"),
    ('http_port = "80"', "http_port", "integer from 1 to 65535"),
    ("agent_port = 70000", "agent_port", "integer from 0 to 65535"),
    ("http_port = 9000\nagent_port = 9000", "agent_port", "must differ from http_port"),
    ('address = "10.0.0.300"', "address", "IPv4 address"),
    ('state_dir = "relative/dir"', "state_dir", "absolute path"),
    ('database_url = "mysql://x"', "database_url", "sqlite:///PATH or postgresql"),
    ('log_level = "loud"', "log_level", "one of debug, info"),
    ("colour = 1", "colour", "unknown key"),
    ("[services]\ndhcp = 1", "services.dhcp", "true or false"),
    ("[services]\ntftp_port = 70000", "services.tftp_port", "1 to 65535"),
    ('[dns]\ndomain = ""', "dns.domain", "DNS name"),
    ('[dns]\nupstream = "resolver"', "dns.upstream", "IP or IP:PORT"),
    (
        "[agent]\nheartbeat_interval = 10\nheartbeat_timeout = 5",
        "agent.heartbeat_timeout",
        "larger than heartbeat_interval",
    ),
    ('[agent]\nkernel_cmdline = "a\\nb"', "agent.kernel_cmdline", "control characters"),
    ('[[subnet]]\nmode = "full"', "subnet[0].cidr", "is required"),
    ('[[subnet]]\ncidr = "10.0.0.1/24"', "subnet[0].cidr", "IPv4 network"),
    ('[[subnet]]\ncidr = "10.0.0.0/24"', "subnet[0].range", "full mode needs range"),
    (
        '[[subnet]]\ncidr = "10.0.0.0/24"\nrange = ["10.0.1.1", "10.0.1.9"]',
        "subnet[0].range",
        "inside 10.0.0.0/24",
    ),
    (
        '[[subnet]]\ncidr = "10.0.0.0/24"\nrange = ["10.0.0.9", "10.0.0.1"]',
        "subnet[0].range",
        "FIRST <= LAST",
    ),
    (
        '[[subnet]]\ncidr = "10.0.0.0/24"\nmode = "proxy"\nrange = ["10.0.0.1", "10.0.0.2"]',
        "subnet[0].range",
        "proxy mode hands out no addresses",
    ),
    ('[[subnet]]\ncidr = "10.0.0.0/24"\nmode = "relay"', "subnet[0].mode", "one of full, proxy"),
    (
        '[[subnet]]\ncidr = "10.0.0.0/24"\nmode = "proxy"\nrouter = "10.9.9.9"',
        "subnet[0].router",
        "inside 10.0.0.0/24",
    ),
    (
        '[[subnet]]\ncidr = "10.0.0.0/24"\nmode = "proxy"\ndns = "10.0.0.1"',
        "subnet[0].dns",
        "must be a list",
    ),
    ('[[storage]]\nname = "a b"\npath = "/x"', "storage[0].name", "letters, digits"),
    ('[[storage]]\nname = "a"', "storage[0].path", "is required"),
    (
        '[[storage]]\nname = "a"\npath = "/x"\nbackend = "zfs"',
        "storage[0].backend",
        "one of file, reflink, lvm",
    ),
    (
        '[[storage]]\nname = "a"\npath = "/x"\n[[storage]]\nname = "a"\npath = "/y"',
        "storage.name",
        "unique",
    ),
    ("subnet = 3", "subnet", "[[subnet]] tables"),
    ("this is not toml", "config", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "key", "fix"), BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_file_names_key_value_and_fix(text, key, fix):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse(text)
    assert err.value.key == key
    assert fix in str(err.value)


def test_missing_file_says_how_to_point_at_one(tmp_path):
    with pytest.raises(cfg.ConfigError, match="PROVISIOND_CONFIG"):
        cfg.load(tmp_path / "nope.toml")


def test_path_resolution_order(monkeypatch, tmp_path):
    monkeypatch.delenv(cfg.ENV_VAR, raising=False)
    assert cfg.resolve_path(None) == cfg.DEFAULT_PATH
    monkeypatch.setenv(cfg.ENV_VAR, str(tmp_path / "env.toml"))
    assert cfg.resolve_path(None) == tmp_path / "env.toml"
    assert cfg.resolve_path("/x/flag.toml").as_posix() == "/x/flag.toml"
