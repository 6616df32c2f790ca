"""Issue 11, finding 13, against a real daemon: HTTPS for the UI and API, plain HTTP for boot.

``provisiond init`` makes a self-signed certificate (or checks a configured
one); the daemon serves the UI and API on ``https_port`` with a Secure
session cookie and HSTS, sends the UI's own HTTP there, and keeps the iPXE
boot path, the agent API and ``/healthz`` on plain HTTP. Every UI answer
carries CSP, X-Frame-Options and X-Content-Type-Options.
"""

from __future__ import annotations

import ssl
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.daemonlab import Daemon
from tests.webclient import Browser, admin_password, kill

pytestmark = pytest.mark.interop


def _config(tmp: Path, http_port: int, https_port: int, extra: str = "") -> Path:
    path = tmp / "provisiond.toml"
    path.write_text(f"""
address = "127.0.0.1"
http_port = {http_port}
state_dir = "{tmp / "state"}"
[services]
dhcp = false
tftp = false
dns = false
[http]
tls = true
https_port = {https_port}
{extra}
""")
    return path


def _started(cfg: Path) -> tuple[Daemon, str]:
    d = Daemon(cfg)
    out = d.cli("init")
    assert out.returncode == 0, out.stdout + out.stderr
    d.start()
    deadline = time.monotonic() + 20  # /healthz answers before the HTTPS listener is up
    while "started:" not in d.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    return d, out.stdout


@pytest.fixture
def tls_daemon(tmp_path):
    https_port = free_port()
    d, out = _started(_config(tmp_path, free_port(), https_port))
    yield d, out, https_port, tmp_path
    kill(d)


def _ui_headers_ok(reply) -> None:
    csp = reply.headers.get("Content-Security-Policy", "")
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, csp
    assert reply.headers.get("X-Frame-Options") == "DENY"
    assert reply.headers.get("X-Content-Type-Options") == "nosniff"


def test_init_makes_a_certificate_and_the_ui_is_https_only(tls_daemon):
    d, out, https_port, tmp = tls_daemon
    cert, key = tmp / "state" / "tls" / "cert.pem", tmp / "state" / "tls" / "key.pem"
    assert cert.exists() and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "fingerprint" in out and str(cert) in out
    password = admin_password(out)

    https = Browser(f"https://127.0.0.1:{https_port}", cafile=str(cert))
    page = https.get("/login")
    assert page.status == 200
    _ui_headers_ok(page)
    assert "max-age=" in page.headers.get("Strict-Transport-Security", "")
    reply = https.login("admin", password)
    assert reply.status == 302
    cookie_line = next(c for c in reply.headers.get_all("Set-Cookie") if "provisiond_session" in c)
    assert "Secure" in cookie_line and "HttpOnly" in cookie_line
    assert https.api("GET", "/me").json()["name"] == "admin"

    # an untrusting client refuses the self-signed certificate (it is real TLS)
    with pytest.raises(ssl.SSLCertVerificationError):
        Browser(f"https://127.0.0.1:{https_port}").get("/login")

    plain = Browser(d.base)
    r = plain.get("/login?next=/jobs")
    assert r.status in (301, 308)
    assert r.headers["Location"] == f"https://127.0.0.1:{https_port}/login?next=/jobs"
    # the session cookie is never honoured over plain HTTP, nor the API
    plain.cookie = https.cookie
    assert plain.api("GET", "/me").status == 403
    assert plain.request("POST", "/login", form={"name": "admin", "password": password}).status in (
        403,
        308,
    )
    # the boot path and health stay plain HTTP (iPXE has no trusted CA for ours)
    assert plain.get("/healthz").status == 200
    boot = plain.get("/boot/52-54-00-00-00-42.ipxe")
    assert boot.status == 200 and boot.text.startswith("#!ipxe")


def test_configured_certificate_is_used_and_checked(tmp_path):
    certs = tmp_path / "certs"
    certs.mkdir()
    cert, key = certs / "site.pem", certs / "site.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec",
                    "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                    "-subj", "/CN=provisiond-test", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)  # fmt: skip
    https_port = free_port()
    extra = f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
    cfg = _config(tmp_path, free_port(), https_port, extra)
    d, _out = _started(cfg)
    try:
        assert not (tmp_path / "state" / "tls").exists()
        got = ssl.get_server_certificate(("127.0.0.1", https_port))
        assert ssl.PEM_cert_to_DER_cert(got) == ssl.PEM_cert_to_DER_cert(cert.read_text())
        assert (
            Browser(f"https://127.0.0.1:{https_port}", cafile=str(cert)).get("/login").status == 200
        )
    finally:
        kill(d)
    # a key that does not match the certificate: init says so, and so does serve
    other = certs / "other.key"
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-out", str(other)], check=True, capture_output=True)  # fmt: skip
    cfg.write_text(cfg.read_text().replace(str(key), str(other)))
    res = Daemon(cfg).cli("init")
    assert res.returncode != 0 and "tls" in (res.stdout + res.stderr).lower()


def test_plain_ui_carries_the_security_headers(tmp_path):
    from tests.conftest import write_config

    d = Daemon(write_config(tmp_path))
    assert d.cli("init").returncode == 0
    d.start()
    try:
        page = Browser(d.base).get("/login")
        assert page.status == 200
        _ui_headers_ok(page)
        assert "Strict-Transport-Security" not in page.headers  # only over HTTPS
    finally:
        kill(d)
