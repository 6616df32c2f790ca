"""storage.fetch against real loopback HTTP servers: the checked address is the one used.

DNS rebinding is played by a resolver that answers differently on each call
(the standard library's ``getaddrinfo`` replaced for the test: the name is
made up, the sockets and servers are real). The early check in provisiond
sees a harmless address, the download's own resolution sees loopback: the
connect-time check must refuse it, and the loopback server must get nothing.
"""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from provisiond import config as configmod
from provisiond import importpolicy
from storage.fetch import URLRefused, open_url, redact_url

pytestmark = pytest.mark.interop


class _Count(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.hits.append((self.path, self.headers.get("Host")))
        body = b"payload"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def servers():
    out = {}
    for ip in ("127.0.0.1", "127.0.0.2"):
        srv = http.server.ThreadingHTTPServer((ip, 0), _Count)
        srv.hits = []
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        out[ip] = srv
    yield out
    for srv in out.values():
        srv.shutdown()
        srv.server_close()


def _rebinding(monkeypatch, answers: list[str], port: int) -> list[str]:
    real = socket.getaddrinfo
    asked: list[str] = []

    def fake(host, p, *a, **kw):
        if host != "rebind.example":
            return real(host, p, *a, **kw)
        ip = answers[min(len(asked), len(answers) - 1)]
        asked.append(ip)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, p))]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return asked


def test_rebinding_to_loopback_is_refused_at_connect_time(monkeypatch, servers):
    cfg = configmod.parse('[images]\nallow_networks = ["127.0.0.2/32"]\n')
    port = servers["127.0.0.1"].server_address[1]
    asked = _rebinding(monkeypatch, ["127.0.0.2", "127.0.0.1"], port)
    url = f"http://rebind.example:{port}/img.raw"
    check = importpolicy.check_url(cfg, url)  # first answer: allowed
    with pytest.raises(URLRefused, match="loopback"):
        open_url(url, check)  # second answer: loopback, refused before connecting
    assert asked == ["127.0.0.2", "127.0.0.1"]
    assert servers["127.0.0.1"].hits == []


def test_connects_to_the_checked_address_with_the_name_as_host(monkeypatch, servers):
    cfg = configmod.parse('[images]\nallow_networks = ["127.0.0.2/32"]\n')
    port = servers["127.0.0.2"].server_address[1]
    _rebinding(monkeypatch, ["127.0.0.2"], port)
    url = f"http://rebind.example:{port}/img.raw"
    with open_url(url, importpolicy.check_url(cfg, url)) as resp:
        assert resp.read() == b"payload"
    assert servers["127.0.0.2"].hits == [("/img.raw", f"rebind.example:{port}")]


@pytest.mark.parametrize(
    "url, shown",
    [
        ("http://u:pw@h/x", "http://u:***@h/x"),
        ("https://tok@h:8/x?y", "https://tok:***@h:8/x?y"),
        ("http://a:b:c@h/", "http://a:***@h/"),
        ("http://h/x", "http://h/x"),
        ("/srv/import/a.raw", "/srv/import/a.raw"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "addr, refused",
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unicast"),
        ("224.0.0.1", "unicast"),
        ("127.0.0.2", None),  # allow-listed
        ("192.0.2.10", None),  # TEST-NET: not ours, not special
    ],
)
def test_address_check_table(addr, refused):
    cfg = configmod.parse('[images]\nallow_networks = ["127.0.0.2/32"]\n')
    why = importpolicy.AddressCheck(cfg).why_refused(addr)
    assert (why is None) if refused is None else (refused in why), why


def test_the_servers_own_non_loopback_addresses_are_refused():
    import json
    import subprocess

    out = subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True).stdout
    own = [a["local"] for link in json.loads(out or "[]") for a in link.get("addr_info", [])
           if a.get("scope") == "global"]  # fmt: skip
    if not own:
        pytest.skip(reason="this host has no global address to test 'own address' with")
    check = importpolicy.AddressCheck(configmod.parse(""))
    for addr in own:
        assert "own address" in (check.why_refused(addr) or ""), addr
