"""Racks: provisiond instances that share one PostgreSQL (issue 10, item 4).

Runs against a private PostgreSQL cluster (tests/pg.py, unix socket only).

* The change feed: a commit by one process (the CLI, another instance) is
  NOTIFYed to every listener, with the tables it touched; heartbeats
  (group-committed Core updates) send nothing.
* Two racks: ``provisiond serve`` as ``r1`` and ``r2``, each in its own
  network namespace (tests/netlab.py) with its own subnet and state_dir,
  one PostgreSQL. A real sh agent (tests/hostagent.py) boots in each
  segment. A kernel added by r1's CLI while both run is in r2's very next
  boot script; each machine is served by the rack its agent reached; either
  rack's API and CLI list both; an erase queued through one rack's CLI runs
  once, on the other rack that reaches the machine; r2 is killed: its
  machine goes ``offline`` naming the rack within the heartbeat timeout while
  r1 keeps serving its own; r2 restarts and its machine comes back.
"""

from __future__ import annotations

import json
import queue
import shutil
import signal
import time

import pytest
from sqlalchemy import bindparam, select, update

from provisiond import users
from provisiond.changes import ChangeFeed
from provisiond.db import Database
from provisiond.model import Job, Kernel, Resource, User, utcnow
from tests.agentlab import BUSYBOX
from tests.daemonlab import LabDaemon, lab_config
from tests.hostagent import HostAgent
from tests.netlab import Lab
from tests.pg import private_cluster

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]


@pytest.fixture
def pg_url():  # each test its own cluster: nothing of one test in the other's lists
    with private_cluster("racks") as url:
        db = Database(url)
        db.migrate()
        db.dispose()
        yield url


def _next(q: queue.Queue, timeout: float = 10.0):
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no change delivered within {timeout} s") from None


def test_a_commit_is_notified_to_every_listener_with_its_tables(pg_url):
    feeds, queues = [], []
    for _ in range(2):  # two daemons listening
        q: queue.Queue = queue.Queue()
        feed = ChangeFeed(pg_url)
        feed.subscribe(q.put)
        feed.start()
        feeds.append(feed)
        queues.append(q)
    cli = Database(pg_url)
    try:
        with cli.transaction() as s:
            s.add(Kernel(name="k1", kernel_path="k1/vmlinuz"))
            s.add(Resource(mac="52:54:00:2a:00:01"))
        for q in queues:
            assert _next(q) == frozenset({"kernel", "resource"})
        # a rolled-back transaction notifies nobody
        with pytest.raises(RuntimeError), cli.transaction() as s:
            s.add(Kernel(name="k2", kernel_path="k2/vmlinuz"))
            s.flush()
            raise RuntimeError("rolled back")
        # a heartbeat group commit (Core executemany) is not an inventory change
        table = Resource.__table__
        with cli.transaction() as s:
            s.connection().execute(
                update(table)
                .where(table.c.id == bindparam("rid"))
                .values(last_heartbeat=bindparam("beat")),
                [{"rid": 1, "beat": utcnow()}],
            )
        with cli.transaction() as s:
            s.add(Kernel(name="k3", kernel_path="k3/vmlinuz"))
        for q in queues:  # the next thing each listener hears is k3, nothing before it
            assert _next(q) == frozenset({"kernel"})
            assert q.empty()
    finally:
        cli.dispose()
        for feed in feeds:
            feed.stop()


# --- two daemons, two namespaces, one PostgreSQL ------------------------------

MACS = {"r1": "52:54:00:2b:00:01", "r2": "52:54:00:2b:00:02"}
HEARTBEAT_TIMEOUT = 30
MiB = 2**20
RACK = (
    "[lease]\nheartbeat_interval = 1\nexpiry = 3\n"
    f"[agent]\nheartbeat_interval = 2\nheartbeat_timeout = {HEARTBEAT_TIMEOUT}\n"
)


def _rack(lab: Lab, work, url: str, name: str) -> LabDaemon:
    work.mkdir(parents=True, exist_ok=True)
    head = f'instance = "{name}"\ndatabase_url = "{url}"\n'
    return LabDaemon(lab, work, head + lab_config(lab, work / "state", RACK))


def _resource(db: Database, mac: str) -> Resource:
    with db.reader() as s:
        return s.scalars(select(Resource).where(Resource.mac == mac)).one()


def _wait(what: str, cond, timeout: float, why=lambda: "") -> float:
    """Seconds until ``cond()`` held; fails naming ``what`` after ``timeout``."""
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < timeout, f"{what} within {timeout} s: {why()}"
        time.sleep(0.3)
    return time.monotonic() - start


@pytest.fixture
def two_racks(tmp_path, pg_url):
    if BUSYBOX is None or not shutil.which("curl"):
        pytest.skip(reason="needs busybox (busybox-static) and curl")
    with Lab("rk1") as lab1, Lab("rk2") as lab2:
        racks = {"r1": _rack(lab1, tmp_path / "r1", pg_url, "r1"),
                 "r2": _rack(lab2, tmp_path / "r2", pg_url, "r2")}  # fmt: skip
        agents: list[HostAgent] = []
        db = Database(pg_url)
        try:
            racks["r1"].cli("init")
            racks["r2"].cli("init")
            yield racks, agents, db
        finally:
            for a in agents:
                a.stop()
            for d in racks.values():
                d.stop()
            db.dispose()


def _api_token(db: Database) -> str:
    with db.transaction() as s:
        admin = s.scalars(select(User).where(User.name == "admin")).one()
        return users.create_token(s, admin, "racks-test", "test")[1]


def test_two_racks_share_one_inventory_and_survive_each_other(two_racks, tmp_path):
    racks, agents, db = two_racks
    r1, r2 = racks["r1"], racks["r2"]
    r1.start()
    r2.start()

    clients = {}
    for name, d in racks.items():
        clients[name] = d.lab.add_client(mac=MACS[name], address=f"{d.lab.net}.50")
    # a kernel committed by another process while both run (this test, as the CLI
    # would: a default kernel row) is in r2's very next boot script, an agent boot
    # with a token instead of discovery only; no wait in between
    leased = r2.dhcp_boot(clients["r2"])
    code, text = r2.boot_script(clients["r2"], MACS["r2"], source=leased)
    assert code == 200 and "provisiond.token=" not in text, text  # no kernel yet
    leased = r2.dhcp_boot(clients["r2"])
    with db.transaction() as s:
        s.add(Kernel(name="k0", kernel_path="k0/vmlinuz", initrd_path="k0/initrd.img",
                     is_default=True))  # fmt: skip
    code, text = r2.boot_script(clients["r2"], MACS["r2"], source=leased)
    assert code == 200 and "provisiond.token=" in text and "k0/vmlinuz" in text, text
    r1.add_fake_kernel()  # and one through r1's CLI, the default from now on
    for name, d in racks.items():
        agents.append(HostAgent(d, clients[name], tmp_path / f"m-{name}", MACS[name], 8 * MiB))
    for name, a in zip(racks, agents, strict=True):
        _wait(f"{name}'s machine idle", lambda n=name: _resource(db, MACS[n]).state == "idle",
              60, a.log)  # fmt: skip

    # each machine is served by the rack its agent reached
    assert {n: _resource(db, MACS[n]).owner for n in racks} == {"r1": "r1", "r2": "r2"}

    # either rack's API and CLI show both machines, and which rack serves each
    auth = {"Authorization": f"Bearer {_api_token(db)}"}
    for name, d in racks.items():
        code, body = d.http(clients[name], "/api/v1/resources", headers=auth)
        assert code == 200, body
        items = json.loads(body)["items"]
        assert {(i["mac"], i["rack"], i["state"]) for i in items} == {
            (MACS["r1"], "r1", "idle"),
            (MACS["r2"], "r2", "idle"),
        }
        assert {r["mac"] for r in d.cli_json("resource", "list")} == set(MACS.values())

    # an erase queued through one rack's CLI runs once, on the rack that reaches the machine
    for queued_by, runs_on, agent in (("r1", "r2", agents[1]), ("r2", "r1", agents[0])):
        agent.disk.write_bytes(b"\xaa" * (8 * MiB))
        mac = MACS[runs_on]
        racks[queued_by].cli("resource", "release", mac, "--erase", "quick", "--wait")
        with db.reader() as s:
            job = s.scalars(
                select(Job).where(Job.kind == "resource.erase").order_by(Job.id.desc())
            ).first()
            assert (job.state, job.owner) == ("succeeded", runs_on), job.outcome
            erase = select(Job).where(Job.kind == "agent.erase")
            cmds = s.scalars(erase.where(Job.resource_id == job.resource_id)).all()
        assert [(c.state, c.owner) for c in cmds][-1:] == [("succeeded", runs_on)]
        assert agent.disk.read_bytes()[:MiB] == bytes(MiB)  # wiped by the machine's agent
        assert f"job {job.id} (resource.erase) running" in racks[runs_on].log.read_text()
        assert f"job {job.id} " not in racks[queued_by].log.read_text()
        assert _resource(db, mac).state == "idle"

    # r2 dies: its machine goes offline naming the rack, within the heartbeat timeout
    r2.stop(signal.SIGKILL)
    killed = utcnow()
    took = _wait("r2's machine offline", lambda: _resource(db, MACS["r2"]).state == "offline",
                 HEARTBEAT_TIMEOUT, lambda: _resource(db, MACS["r2"]).state_reason)  # fmt: skip
    reason = _resource(db, MACS["r2"]).state_reason
    assert reason.startswith("rack r2 stopped heartbeating (its lease expired at "), reason
    assert took < HEARTBEAT_TIMEOUT
    assert "rack r2 stopped heartbeating" in r1.log.read_text()

    # ... while r1 keeps serving its own machine: heartbeats and jobs
    _wait("r1's machine heartbeating after the kill",
          lambda: _resource(db, MACS["r1"]).last_heartbeat > killed, 15)  # fmt: skip
    assert _resource(db, MACS["r1"]).state == "idle"
    agents[0].disk.write_bytes(b"\xbb" * (8 * MiB))
    r1.cli("resource", "release", MACS["r1"], "--erase", "quick", "--wait")
    assert agents[0].disk.read_bytes()[:MiB] == bytes(MiB)
    code, _ = r1.http(clients["r1"], "/healthz")
    assert code == 200

    # r2 comes back: its agent's next heartbeat brings the machine back, served by r2
    r2.start()
    _wait("r2's machine idle again", lambda: _resource(db, MACS["r2"]).state == "idle", 30,
          agents[1].log)  # fmt: skip
    assert _resource(db, MACS["r2"]).owner == "r2"
