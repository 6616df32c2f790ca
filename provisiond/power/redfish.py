"""Redfish power: ``ComputerSystem.PowerState`` and the ``ComputerSystem.Reset`` action.

Owns the Redfish client calls (DMTF DSP0266): log-in through the
SessionService (``POST /redfish/v1/SessionService/Sessions`` -> ``X-Auth-Token``,
section 13.3.4), falling back to HTTP Basic when a BMC has no session service
(404/405/501), finding the system (``options.system``, else the first member of
``/redfish/v1/Systems``), reading its power state and posting its Reset action.

Sessions are kept per BMC and user in this process and reused by every call
(BMCs allow few sessions; a new one per poll would exhaust them). A 401 on a
kept session logs in once more. ``address`` is ``host[:port]`` (HTTPS) or a full
``http(s)://`` URL; TLS is verified unless ``options.verify_tls`` is false;
``options.ca_file`` trusts a BMC's own CA. The password only ever leaves in the
log-in body or the Basic header, over the connection to the BMC.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import ssl
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from provisiond.power import (
    BadCredentials,
    BmcUnreachable,
    NotSupported,
    PowerAction,
    PowerError,
    PowerSettings,
    PowerState,
    register,
)

SESSIONS = "/redfish/v1/SessionService/Sessions"
SYSTEMS = "/redfish/v1/Systems"
_ON = {"On", "PoweringOff", "Paused"}


@dataclass
class _Login:
    mode: str  # "session" | "basic"
    token: str = ""
    system: str = ""  # the system's @odata.id, found once


_logins: dict[tuple[str, str, str], _Login] = {}
_logins_lock = threading.Lock()


def forget_sessions() -> None:
    """Drop every kept session (tests; a changed password needs no call: it keys anew)."""
    with _logins_lock:
        _logins.clear()


def reset_type(action: PowerAction, allowed: list[str] | None, state: PowerState) -> list[str]:
    """The ResetType values that perform ``action``, in order (several = one after another)."""
    ok = (lambda v: True) if not allowed else (lambda v: v in allowed)
    if action == PowerAction.ON:
        choices = [["On"], ["ForceOn"]]
    elif action == PowerAction.OFF:
        choices = [["ForceOff"], ["GracefulShutdown"]]
    elif state == PowerState.OFF:
        choices = [["On"], ["ForceOn"]]
    else:
        choices = [["PowerCycle"], ["ForceRestart"], ["ForceOff", "On"]]
    for seq in choices:
        if all(ok(v) for v in seq):
            return seq
    raise NotSupported(f"the system allows only reset types {allowed}, none of them does {action}")


class RedfishDriver:
    def __init__(self, settings: PowerSettings) -> None:
        if not settings.address:
            raise PowerError("redfish: no BMC address; set one with `resource set-power --address`")
        address = settings.address
        if "://" not in address:
            address = "https://" + address
        parts = urlsplit(address)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PowerError(f"redfish: address {settings.address!r}: use host[:port] or a URL")
        self.settings = settings
        self.scheme, self.host = parts.scheme, parts.hostname
        self.port = parts.port or (443 if self.scheme == "https" else 80)
        self.where = f"{self.scheme}://{parts.netloc}"
        opts = settings.options
        self.system_option = str(opts.get("system", ""))
        self.auth = str(opts.get("auth", "auto"))  # auto | session | basic
        self._tls = None
        if self.scheme == "https":
            ctx = ssl.create_default_context(cafile=opts.get("ca_file") or None)
            if opts.get("verify_tls", True) is False:
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            self._tls = ctx
        digest = hashlib.sha256(settings.password.encode()).hexdigest()
        self._key = (self.where, settings.user, digest)

    # --- HTTP ---------------------------------------------------------------

    def _http(self, method: str, path: str, body: Any = None, headers=None):
        timeout = self.settings.timeout
        if self._tls is not None:
            conn = http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=self._tls
            )
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        data = None if body is None else json.dumps(body).encode()
        hdrs = {"Accept": "application/json", **(headers or {})}
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, resp.headers, raw
        except ssl.SSLError as exc:
            raise PowerError(
                f"redfish {self.where}: TLS failed ({exc.reason or exc}); give the BMC's CA "
                "with options ca_file, or set options verify_tls=false on a trusted network"
            ) from None
        except TimeoutError:
            raise BmcUnreachable(
                f"redfish {self.where}: no answer within {timeout:.0f} s; check the address "
                "and that the BMC is powered and on the management network"
            ) from None
        except OSError as exc:
            raise BmcUnreachable(
                f"redfish {self.where}: cannot connect ({exc.strerror or exc}); check the "
                "address and port and that the BMC's Redfish service is enabled"
            ) from None
        finally:
            conn.close()

    def _login(self) -> _Login:
        with _logins_lock:
            known = _logins.get(self._key)
        if known is not None:
            return known
        s = self.settings
        login = _Login(mode="basic")
        if self.auth != "basic":
            status, headers, _ = self._http(
                "POST", SESSIONS, {"UserName": s.user, "Password": s.password}
            )
            if status in (200, 201) and headers.get("X-Auth-Token"):
                login = _Login(mode="session", token=headers["X-Auth-Token"])
            elif status in (401, 403):
                # a BMC may guard its session service itself (sushy-tools does): try Basic
                basic = _Login(mode="basic")
                probe, _, _ = self._http("GET", SYSTEMS, headers=self._auth_headers(basic))
                if self.auth == "session" or probe != 200:
                    raise self._refused(status)
            elif self.auth == "session" or status not in (404, 405, 501):
                raise PowerError(f"redfish {self.where}: session log-in answered HTTP {status}")
        with _logins_lock:
            _logins[self._key] = login
        return login

    def _refused(self, status: int) -> BadCredentials:
        return BadCredentials(
            f"redfish {self.where}: the BMC refused user {self.settings.user!r} (HTTP {status}); "
            "set the user and password again with `provisiond resource set-power`"
        )

    def _auth_headers(self, login: _Login) -> dict[str, str]:
        if login.mode == "session":
            return {"X-Auth-Token": login.token}
        pair = f"{self.settings.user}:{self.settings.password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        for attempt in (0, 1):
            login = self._login()
            status, _, raw = self._http(method, path, body, self._auth_headers(login))
            if status == 401 and attempt == 0 and login.mode == "session":
                with _logins_lock:
                    _logins.pop(self._key, None)  # the session expired: log in once more
                continue
            if status in (401, 403):
                with _logins_lock:
                    _logins.pop(self._key, None)
                raise self._refused(status)
            if status == 404:
                raise NotSupported(f"redfish {self.where}: {path} does not exist (HTTP 404)")
            if status >= 400:
                raise PowerError(f"redfish {self.where}: {method} {path}: HTTP {status} "
                                 f"{_message(raw)}")  # fmt: skip
            return json.loads(raw) if raw else {}
        raise self._refused(401)

    # --- the system ---------------------------------------------------------

    def _system_path(self) -> str:
        login = self._login()
        if login.system:
            return login.system
        if self.system_option:
            opt = self.system_option
            path = opt if opt.startswith("/") else f"{SYSTEMS}/{opt}"
        else:
            members = self._call("GET", SYSTEMS).get("Members") or []
            if not members:
                raise NotSupported(f"redfish {self.where}: the BMC lists no computer system")
            path = members[0]["@odata.id"]
        login.system = path
        return path

    def _system(self) -> tuple[str, dict[str, Any]]:
        path = self._system_path()
        return path, self._call("GET", path)

    def status(self) -> PowerState:
        _, system = self._system()
        return _state(system)

    def act(self, action: PowerAction) -> None:
        if action == PowerAction.STATUS:
            raise NotSupported("status is not an action")
        path, system = self._system()
        reset = (system.get("Actions") or {}).get("#ComputerSystem.Reset")
        if not reset:
            raise NotSupported(f"redfish {self.where}: {path} has no ComputerSystem.Reset action")
        target = reset.get("target") or f"{path}/Actions/ComputerSystem.Reset"
        allowed = reset.get("ResetType@Redfish.AllowableValues")
        for value in reset_type(action, allowed, _state(system)):
            self._call("POST", target, {"ResetType": value})


def _state(system: dict[str, Any]) -> PowerState:
    value = system.get("PowerState")
    if value is None:
        return PowerState.UNKNOWN
    return PowerState.ON if value in _ON else PowerState.OFF


def _message(raw: bytes) -> str:
    try:
        err = json.loads(raw).get("error", {})
        info = err.get("@Message.ExtendedInfo") or [{}]
        return info[0].get("Message") or err.get("message", "")
    except (ValueError, AttributeError):
        return raw[:200].decode(errors="replace")


@register("redfish")
def _factory(settings: PowerSettings) -> RedfishDriver:
    return RedfishDriver(settings)
