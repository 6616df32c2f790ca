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
allow = ["10.9.0.0/16", "192.0.2.7", "fd00::/8"]
rate_limit = 20
rate_limit_slip = 0
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
    assert [str(n) for n in c.dns.allow] == ["10.9.0.0/16", "192.0.2.7/32", "fd00::/8"]
    assert (c.dns.rate_limit, c.dns.rate_limit_slip, c.dns.max_udp_size) == (20, 0, 1232)
    assert c.agent.heartbeat_timeout == 30
    full, proxy = c.subnets
    assert full.mode == "full" and str(full.range_start) == "10.77.0.100"
    assert proxy.mode == "proxy" and proxy.range_start is None
    assert c.storages[0].backend == "reflink" and c.storages[0].exporter == "auto"


def test_defaults_need_no_file_content():
    c = cfg.parse("")
    assert c.http_port == 8080 and c.subnets == () and c.services.dhcp
    assert c.instance == cfg.default_instance() and cfg.INSTANCE_NAME.match(c.instance)
    assert (c.lease.heartbeat_interval, c.lease.expiry, c.lease.seconds) == (10, 3, 30)


def test_instance_identity_and_lease():
    c = cfg.parse('instance = "r1"\n[lease]\nheartbeat_interval = 2\nexpiry = 5')
    assert c.instance == "r1" and c.lease.seconds == 10


def test_default_instance_is_the_host_name_or_default(monkeypatch):
    monkeypatch.setattr(cfg.socket, "gethostname", lambda: "rack-7.lab.example")
    assert cfg.default_instance() == "rack-7"
    monkeypatch.setattr(cfg.socket, "gethostname", lambda: "")
    assert cfg.default_instance() == "default"


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
    ('[dns]\nallow = "10.0.0.0/8"', "dns.allow", "must be a list of networks"),
    ('[dns]\nallow = ["10.0.0.1/8"]', "dns.allow", "has host bits set"),
    ('[dns]\nallow = ["lab"]', "dns.allow", "does not appear to be an IPv4 or IPv6"),
    ("[dns]\nrate_limit = -1", "dns.rate_limit", "integer from 0 to 100000"),
    ("[dns]\nrate_limit_slip = 11", "dns.rate_limit_slip", "integer from 0 to 10"),
    ("[dns]\nmax_udp_size = 100", "dns.max_udp_size", "integer from 512 to 4096"),
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
    (
        '[[storage]]\nname = "a"\npath = "vg"\nbackend = "lvm"\nhost = "h"\nalive_timeout = 0',
        "storage[0].alive_timeout",
        "integer from 1 to 300",
    ),
    ("subnet = 3", "subnet", "[[subnet]] tables"),
    ('instance = "rack 1"', "instance", "letters, digits"),
    ('instance = "-r1"', "instance", "letters, digits"),
    (f'instance = "{"r" * 64}"', "instance", "1-63"),
    ("instance = 1", "instance", "must be a string"),
    ("[lease]\nheartbeat_interval = 0", "lease.heartbeat_interval", "integer from 1 to 3600"),
    ("[lease]\nexpiry = 1", "lease.expiry", "integer from 2 to 100"),
    ("[lease]\nttl = 9", "lease.ttl", "unknown key"),
    ("this is not toml", "config", "not valid TOML"),
    ('[images]\nimport_dirs = "/srv"', "images.import_dirs", "must be a list"),
    ('[images]\nimport_dirs = ["srv"]', "images.import_dirs", "absolute path"),
    ('state_dir = "/v"\n[images]\nimport_dirs = ["/v/in"]', "images.import_dirs", "state_dir"),
    ('[images]\nallow_networks = ["10.0.0.1/8"]', "images.allow_networks", "network"),
    ("[images]\nfolders = []", "images.folders", "unknown key"),
    ('[http]\ntls_cert = "/c.pem"', "http.tls_key", "set both"),
    ('[http]\ntls_cert = "c.pem"\ntls_key = "k.pem"', "http.tls_cert", "absolute path"),
    ("[http]\ntls = true\nhttps_port = 8080", "http.https_port", "differ from http_port"),
    ("[http]\ntls = 1", "http.tls", "true or false"),
]


def test_images_and_http_sections_parse():
    c = cfg.parse(
        '[images]\nimport_dirs = ["/srv/a", "/srv/b"]\n'
        'allow_networks = ["10.0.0.5/32", "fd00::/8"]\n'
        '[http]\ntls = true\nhttps_port = 9443\ntls_cert = "/c.pem"\ntls_key = "/k.pem"\n'
    )
    assert [str(p) for p in c.images.import_dirs] == ["/srv/a", "/srv/b"]
    assert [str(n) for n in c.images.allow_networks] == ["10.0.0.5/32", "fd00::/8"]
    assert c.ui_base == "https://127.0.0.1:9443" and str(c.tls_key_path) == "/k.pem"
    plain = cfg.parse("")
    assert plain.ui_base == plain.http_base and plain.images.import_dirs == ()
    assert plain.tls_cert_path == plain.state_dir / "tls" / "cert.pem"


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
