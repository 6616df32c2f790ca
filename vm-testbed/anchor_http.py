"""The anchor path's HTTP server: static files plus a registration recorder.

Owns nothing but one listening socket. GET/HEAD serve a directory exactly as
``python -m http.server`` does (same handler class); POST to any path is
recorded as one JSON line ``{"t": <epoch>, "path": ..., "body": ...}`` in
the record file and answered ``200 {}`` -- enough for the benchmark to see
when an agent's ``POST {url}/agent/v1/register`` arrives.

    python3 anchor_http.py --bind 10.77.0.1 --port 8081 --dir DIR --record FILE

Stdlib only; run inside the test bed's namespace (``nsenter --net``).
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20


class Handler(SimpleHTTPRequestHandler):
    record_path = ""

    def do_POST(self) -> None:
        t = time.time()
        length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        with open(self.record_path, "a") as f:
            f.write(json.dumps({"t": t, "path": self.path, "body": body}) + "\n")
        reply = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bind", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--record", required=True)
    args = ap.parse_args()
    Handler.record_path = args.record
    handler = functools.partial(Handler, directory=args.dir)
    ThreadingHTTPServer.daemon_threads = True
    with ThreadingHTTPServer((args.bind, args.port), handler) as srv:
        srv.serve_forever()


if __name__ == "__main__":
    main()
