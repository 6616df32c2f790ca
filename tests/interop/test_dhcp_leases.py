"""Lease group commit through the DBAPI, on real SQLite and a private PostgreSQL.

``SqlLeaseStore.write`` bypasses SQLAlchemy for speed; these tests prove that
what it writes is what SQLAlchemy reads (same DateTime storage), that a
batch is one transaction (a bad row fails the whole batch, nothing half
written), that the writer recovers after a failure or a lost connection, and
that the serve loop sends an ACK only after its lease row committed (busybox
udhcpc against ``python -m provisiond.standalone dhcp`` while the test holds SQLite's write lock),
and that REQUESTs queued meanwhile commit as one group.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import subprocess
import sys
import time

import pytest
from sqlalchemy import select, text

from provisiond.db import Database
from provisiond.leases import SqlLeaseStore
from provisiond.model import Lease
from pxe.dhcp.pool import LeaseRow
from tests.dhcplab import (  # noqa: F401
    MAC1,
    REPO,
    Server,
    script,
    write_config,
)
from tests.netlab import Lab
from tests.pg import private_cluster

pytestmark = pytest.mark.interop
T = 1_800_000_000.25  # a lease expiry with a fractional second
EXPIRES = dt.datetime(2027, 1, 15, 8, 0, 1)  # T rounded up, in UTC, naive like the model
KILL_OTHERS = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
    " WHERE pid <> pg_backend_pid() AND datname = current_database()"
)
LOG = logging.getLogger("test-leases")


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        d = Database(f"sqlite:///{tmp_path / 'p.db'}")
        d.migrate()
        yield d
        d.dispose()
    else:
        with private_cluster() as url:
            d = Database(url)
            d.migrate()
            yield d
            d.dispose()


@pytest.fixture
def store(db):
    s = SqlLeaseStore(db, LOG)
    yield s
    s.stop()


def row(ip: str, mac: str = "52:54:00:00:00:01", state: str = "bound", **kw) -> LeaseRow:
    return LeaseRow(ip, mac, "10.5.0.0/24", state, kw.get("hostname", ""), kw.get("expires", T))


def rows_in(db: Database) -> dict[str, tuple]:
    with db.transaction() as s:
        return {r.ip: (r.mac, r.state, r.hostname, r.expires_at) for r in s.scalars(select(Lease))}


def test_written_rows_read_back_through_sqlalchemy(db, store):
    assert store.write([row("10.5.0.10", hostname="n1"), row("10.5.0.11", "52:54:00:00:00:02")])
    got = rows_in(db)
    assert got == {
        "10.5.0.10": ("52:54:00:00:00:01", "bound", "n1", EXPIRES),
        "10.5.0.11": ("52:54:00:00:00:02", "bound", "", EXPIRES),
    }
    assert [r.expires for r in store.load_leases(0)] == [T + 0.75, T + 0.75]  # never earlier
    assert (store.batches, store.rows_written, store.failures) == (1, 2, 0)


def test_sqlite_datetime_text_is_sqlalchemys_own(tmp_path):
    """SQLite compares DateTime as text: the raw path must store SQLAlchemy's exact format."""
    d = Database(f"sqlite:///{tmp_path / 'p.db'}")
    d.migrate()
    with d.transaction() as s:
        s.add(Lease(ip="10.5.0.9", mac="m", subnet="n", state="bound", hostname="",
                    expires_at=dt.datetime(2027, 1, 15, 8, 0, 0)))  # fmt: skip
    store = SqlLeaseStore(d, LOG)
    try:
        assert store.write([row("10.5.0.10", expires=T - 0.25)])  # whole second
        with d.engine.connect() as c:
            stored = dict(c.execute(text("SELECT ip, expires_at FROM lease")).all())
        assert stored["10.5.0.10"] == stored["10.5.0.9"] == "2027-01-15 08:00:00.000000"
    finally:
        store.stop()
        d.dispose()


def test_upsert_replaces_the_row_of_an_address(db, store):
    assert store.write([row("10.5.0.10")])
    assert store.write([row("10.5.0.10", "52:54:00:00:00:09", "released", expires=T + 60)])
    assert rows_in(db) == {
        "10.5.0.10": ("52:54:00:00:00:09", "released", "", EXPIRES + dt.timedelta(seconds=60))
    }


def test_a_bad_row_fails_its_whole_batch_and_the_next_batch_commits(db, store):
    bad = LeaseRow("10.5.0.12", None, "10.5.0.0/24", "bound", "", T)  # mac is NOT NULL
    assert store.write([row("10.5.0.10"), bad]) is False
    assert store.failures == 1 and rows_in(db) == {}  # nothing of the batch committed
    assert store.write([row("10.5.0.11")])
    assert list(rows_in(db)) == ["10.5.0.11"]


def test_writer_reconnects_after_its_postgresql_connection_dies(tmp_path):
    with private_cluster() as url:
        d = Database(url)
        d.migrate()
        store = SqlLeaseStore(d, LOG)
        try:
            assert store.write([row("10.5.0.10")])
            with d.engine.begin() as c:  # kill every other backend: the writer's connection
                c.execute(text(KILL_OTHERS))
            assert store.write([row("10.5.0.11")]) is False  # that batch's ACKs stay unsent
            assert store.write([row("10.5.0.12")])  # a fresh connection
            assert sorted(rows_in(d)) == ["10.5.0.10", "10.5.0.12"]
        finally:
            store.stop()
            d.dispose()


def test_ack_leaves_only_after_its_lease_row_committed(tmp_path, script):  # noqa: F811
    """The test holds SQLite's write lock: udhcpc gets no ACK until the lock is released."""
    with Lab("dhcpl") as lab:
        client = lab.add_client(MAC1)
        server = Server(lab, write_config(tmp_path, lab))
        lock = sqlite3.connect(tmp_path / "p.db", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # the lease writer now waits (busy_timeout)
        udhcpc = client.popen(
            ["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "3",
             "-s", str(script)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            time.sleep(3.0)  # DISCOVER -> OFFER -> REQUEST happen now; the ACK must wait
            assert udhcpc.poll() is None, "udhcpc finished while the lease row could not commit"
            released = time.monotonic()
            lock.execute("COMMIT")
            out, err = udhcpc.communicate(timeout=30)
            bound_after = time.monotonic() - released
        finally:
            lock.close()
            if udhcpc.poll() is None:
                udhcpc.kill()
        assert "BOUND" in out, f"udhcpc got no lease: {out}\n{err}"
        ip = out.split("ip=", 1)[1].split()[0]
        with sqlite3.connect(tmp_path / "p.db") as c:
            assert c.execute("SELECT mac, state FROM lease WHERE ip = ?", (ip,)).fetchone() == (
                MAC1,
                "bound",
            )
        stats = server.stop()
        assert stats["acked"] >= 1 and stats["offered"] >= 1
        assert bound_after < 10, "the ACK did not follow the commit promptly"


# A relay agent in the client namespace (RFC 2131 section 4.1: giaddr = its own
# address, server port to server port): sends N REQUESTs for free addresses at
# once, then counts the ACKs that come back within the timeout.
RELAY = """
import json, socket, sys, time
from pxe.dhcp.codec import ACK, REQUEST, DhcpPacket, Opt, decode, encode
server, giaddr, net, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((giaddr, 67))
for i in range(n):
    s.sendto(encode(DhcpPacket(op=1, xid=1000 + i, chaddr=f"52:54:00:bb:00:{i:02x}", hops=1,
        giaddr=giaddr, options={Opt.MESSAGE_TYPE: bytes((REQUEST,)),
        Opt.REQUESTED_IP: socket.inet_aton(f"{net}.{110 + i}"),
        Opt.SERVER_ID: socket.inet_aton(server)})), (server, 67))
s.settimeout(15)
acks = set()
try:
    while len(acks) < n:
        p = decode(s.recv(2048))
        if p.message_type == ACK:
            acks.add(p.xid)
except TimeoutError:
    pass
print(json.dumps(sorted(acks)))
"""


def test_requests_queued_behind_a_commit_go_into_one_group(tmp_path):
    """The first REQUEST's commit waits on the held lock; the 9 behind it commit together."""
    with Lab("dhcpg") as lab:
        client = lab.add_client(address=f"{lab.net}.2")
        server = Server(lab, write_config(tmp_path, lab))
        lock = sqlite3.connect(tmp_path / "p.db", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        relay = client.popen(
            [sys.executable, "-c", RELAY, lab.server_ip, f"{lab.net}.2", lab.net, "10"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            time.sleep(2.0)  # all 10 REQUESTs are in the server's socket or handled by now
            lock.execute("COMMIT")
            out, err = relay.communicate(timeout=30)
        finally:
            lock.close()
            if relay.poll() is None:
                relay.kill()
        assert json.loads(out) == list(range(1000, 1010)), err
        stats = server.stop()
        assert stats["acked"] == 10
        # 1 row, then the 9 queued behind it (or all 10 at once when the relay was slow to
        # start): never one commit per ACK, which a drain limit of 1 would give
        assert 1 <= stats["lease_batches"] <= 2, stats
        with sqlite3.connect(tmp_path / "p.db") as c:
            assert c.execute("SELECT count(*) FROM lease WHERE state = 'bound'").fetchone() == (10,)
