"""A small real Redfish service: N simulated BMCs over HTTP on loopback.

Owns a test peer for the redfish power driver and its benchmark: each BMC
listens on its own 127.0.0.1 port (aiohttp) and serves the service root, a
SessionService (``POST .../Sessions`` -> ``X-Auth-Token``, ``DELETE`` to log
out), HTTP Basic as the alternative, ``/redfish/v1/Systems/1`` with its
``PowerState`` and the ``ComputerSystem.Reset`` action. Wrong credentials get
401. ``sessions=False`` makes a BMC without a session service (404), the way
some older BMCs and sushy-tools' emulator are. Counters (logins, requests,
resets) let tests check what the client really did.

Run standalone for the benchmark (a separate process, so its CPU is not the
client's): ``python -m tests.redfish_sim --count 1000 --ports-file F``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import signal
import threading
from dataclasses import dataclass, field

from aiohttp import web

SYSTEM = "/redfish/v1/Systems/1"
RESET_TYPES = ["On", "ForceOff", "GracefulShutdown", "ForceRestart", "PowerCycle"]


@dataclass
class Bmc:
    user: str
    password: str
    sessions: bool = True
    power: str = "Off"
    port: int = 0
    tokens: set[str] = field(default_factory=set)
    logins: int = 0
    requests: int = 0
    resets: list[str] = field(default_factory=list)

    def authorized(self, request: web.Request) -> bool:
        token = request.headers.get("X-Auth-Token")
        if token and token in self.tokens:
            return True
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                pair = base64.b64decode(auth[6:]).decode()
            except ValueError:
                return False
            return pair == f"{self.user}:{self.password}"
        return False


def _error(status: int, message: str) -> web.Response:
    body = {"error": {"code": "Base.1.0.GeneralError", "message": message}}
    return web.json_response(body, status=status)


def make_app(bmc: Bmc) -> web.Application:
    async def root(_request):
        body = {
            "@odata.id": "/redfish/v1/",
            "@odata.type": "#ServiceRoot.v1_5_0.ServiceRoot",
            "Id": "RootService",
            "Name": "Simulated BMC",
            "RedfishVersion": "1.6.0",
            "UUID": "85775665-c110-4b85-8989-e6162170b3ec",
            "Systems": {"@odata.id": "/redfish/v1/Systems"},
        }
        if bmc.sessions:
            body["SessionService"] = {"@odata.id": "/redfish/v1/SessionService"}
            body["Links"] = {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}}
        return web.json_response(body)

    async def login(request):
        if not bmc.sessions:
            return _error(404, "no session service")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body must be JSON")
        if body.get("UserName") != bmc.user or body.get("Password") != bmc.password:
            return _error(401, "invalid credentials")
        bmc.logins += 1
        token = secrets.token_hex(16)
        bmc.tokens.add(token)
        sid = len(bmc.tokens)
        return web.json_response(
            {"@odata.id": f"/redfish/v1/SessionService/Sessions/{sid}"},
            status=201,
            headers={
                "X-Auth-Token": token,
                "Location": f"/redfish/v1/SessionService/Sessions/{sid}",
            },
        )

    async def logout(request):
        token = request.headers.get("X-Auth-Token")
        bmc.tokens.discard(token)
        return web.Response(status=204)

    @web.middleware
    async def guard(request, handler):
        bmc.requests += 1
        path = request.path.rstrip("/")
        public = path == "/redfish/v1" or (
            path == "/redfish/v1/SessionService/Sessions" and request.method == "POST"
        )
        if public:
            return await handler(request)
        if not bmc.authorized(request):
            return _error(401, "authentication required")
        return await handler(request)

    async def systems(_request):
        return web.json_response({"Members": [{"@odata.id": SYSTEM}], "Members@odata.count": 1})

    async def system(_request):
        return web.json_response(
            {
                "@odata.id": SYSTEM,
                "@odata.type": "#ComputerSystem.v1_10_0.ComputerSystem",
                "Id": "1",
                "Name": "system",
                "PowerState": bmc.power,
                "Actions": {
                    "#ComputerSystem.Reset": {
                        "target": f"{SYSTEM}/Actions/ComputerSystem.Reset",
                        "ResetType@Redfish.AllowableValues": RESET_TYPES,
                    }
                },
            }
        )

    async def reset(request):
        try:
            kind = (await request.json()).get("ResetType")
        except ValueError:
            return _error(400, "body must be JSON")
        if kind not in RESET_TYPES:
            return _error(400, f"ResetType {kind!r} is not allowed")
        bmc.resets.append(kind)
        if kind == "On":
            bmc.power = "On"
        elif kind in ("ForceOff", "GracefulShutdown"):
            bmc.power = "Off"
        elif bmc.power == "Off":
            return _error(409, "the system is off")
        return web.Response(status=204)

    app = web.Application(middlewares=[guard])
    app.router.add_get("/redfish/v1", root)
    app.router.add_get("/redfish/v1/", root)
    app.router.add_post("/redfish/v1/SessionService/Sessions", login)
    app.router.add_delete("/redfish/v1/SessionService/Sessions/{sid}", logout)
    app.router.add_get("/redfish/v1/Systems", systems)
    app.router.add_get(SYSTEM, system)
    app.router.add_post(f"{SYSTEM}/Actions/ComputerSystem.Reset", reset)
    return app


class RedfishSim:
    """``count`` BMCs in a background thread's event loop; ``with RedfishSim(3) as sim:``."""

    def __init__(self, count: int = 1, user: str = "admin", password: str = "s3cret",
                 sessions: bool = True) -> None:  # fmt: skip
        self.bmcs = [Bmc(user, password, sessions) for _ in range(count)]
        self._loop = asyncio.new_event_loop()
        self._runners: list[web.AppRunner] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{b.port}" for b in self.bmcs]

    async def _start(self) -> None:
        for bmc in self.bmcs:
            runner = web.AppRunner(make_app(bmc), access_log=None, shutdown_timeout=0.5)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
            await site.start()
            bmc.port = runner.addresses[0][1]
            self._runners.append(runner)

    async def _stop(self) -> None:
        # all at once: a client's kept-alive connections hold each site up to shutdown_timeout
        await asyncio.gather(*(runner.cleanup() for runner in self._runners))

    def __enter__(self) -> RedfishSim:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(60)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--ports-file", required=True, help="write the BMCs' URLs here, one a line")
    p.add_argument("--user", default="admin")
    p.add_argument("--password", default="s3cret")
    args = p.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with RedfishSim(args.count, args.user, args.password) as sim:
        for i, bmc in enumerate(sim.bmcs):
            bmc.power = "On" if i % 2 else "Off"
        with open(args.ports_file, "w") as f:
            f.write("\n".join(sim.urls()) + "\n")
        print(json.dumps({"ready": args.count}), flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
