"""The embedded HTTP servers: waitress for plain HTTP, cheroot for HTTPS, each in a thread.

Owns listening on ``address:http_port`` (and ``[http] https_port`` when TLS
is on, :class:`HttpsService`) and serving the Flask app. Files are
streamed through ``wsgi.file_wrapper`` with bounded memory whatever their
size. Agent control calls (long polls included) are not served here but by
the asyncio agent channel (:mod:`provisiond.agentd`).
"""

from __future__ import annotations

import threading

from waitress.server import create_server
from waitress.task import ThreadedTaskDispatcher

from provisiond import logs, priority

log = logs.get("http")
CONNECTION_LIMIT = 2000
OUTBUF_HIGH = 2 * 2**20  # waitress default 16 MiB: per-connection buffer before the app waits
OUTBUF_OVERFLOW = 4 * 2**20  # waitress default 1 MiB: beyond it the buffer spills to a temp file


class _FavouredDispatcher(ThreadedTaskDispatcher):
    """waitress's worker threads, each favoured over bulk work (:mod:`provisiond.priority`)."""

    def start_new_thread(self, target, thread_no):
        super().start_new_thread(priority.favoured_thread(target, "http workers"), thread_no)


class HttpService:
    name = "http"

    def __init__(self, app, host: str, port: int, threads: int = 48) -> None:
        self._app, self._host, self._port, self._threads = app, host, port, threads
        self._server = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        dispatcher = _FavouredDispatcher()
        dispatcher.set_thread_count(self._threads)
        try:
            self._server = create_server(
                self._app,
                _dispatcher=dispatcher,
                host=self._host,
                port=self._port,
                threads=self._threads,
                # waitress's default is 100 open connections; a boot storm of
                # thousands of machines fetching scripts queues instead of refusing
                connection_limit=CONNECTION_LIMIT,
                backlog=4096,
                # poll(), not select(): select() fails on descriptors >= 1024, which a
                # daemon holding thousands of agent sockets reaches
                asyncore_use_poll=True,
                channel_timeout=120,
                # Streamed bodies (chunk streams) stay in memory: the app blocks at
                # 2 MiB buffered per connection, below the 4 MiB spill-to-tempfile mark.
                outbuf_high_watermark=OUTBUF_HIGH,
                outbuf_overflow=OUTBUF_OVERFLOW,
                ident="provisiond",
                clear_untrusted_proxy_headers=True,
            )
        except OSError as exc:
            dispatcher.shutdown(cancel_pending=True, timeout=1)
            raise RuntimeError(
                f"http: cannot listen on {self._host}:{self._port} ({exc.strerror}); "
                "change http_port or address in the config, or stop what uses the port"
            )
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._thread.start()
        log.info("listening on http://%s:%d", self._host, self._port)

    def _run(self) -> None:
        priority.favour("http")
        try:
            self._server.run()
        except Exception:  # pragma: no cover - closing the map raises in waitress
            if self._server is not None:
                log.debug("http loop ended", exc_info=True)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=2)
        self._server.close()
        if self._thread:
            self._thread.join(2)
        self._server = None


class HttpsService:
    """The UI and API over TLS: cheroot (CherryPy's production WSGI server) in a thread.

    waitress speaks no TLS, and a stdlib SSL socket handed to its non-blocking
    loop would stall on SSLWantRead; cheroot has a built-in TLS adapter, a
    thread pool and a bounded stop. The boot path (iPXE, the agent's long
    polls, image streams) stays on :class:`HttpService`: iPXE has no trusted
    CA for a self-signed certificate.
    """

    name = "https"

    def __init__(self, app, host: str, port: int, cert: str, key: str, threads: int = 16) -> None:
        self._app, self._host, self._port = app, host, port
        self._cert, self._key, self._threads = cert, key, threads
        self._server = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        import ssl

        from cheroot import wsgi
        from cheroot.ssl.builtin import BuiltinSSLAdapter

        server = wsgi.Server(
            (self._host, self._port), self._app, numthreads=self._threads,
            max=self._threads * 3, server_name="provisiond", timeout=120,
        )  # fmt: skip
        server.version = "provisiond"
        adapter = BuiltinSSLAdapter(self._cert, self._key)
        adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
        server.ssl_adapter = adapter
        try:
            server.prepare()
        except OSError as exc:
            raise RuntimeError(
                f"https: cannot listen on {self._host}:{self._port} ({exc}); change "
                "[http] https_port or address in the config, or stop what uses the port"
            )
        self._server = server
        self._thread = threading.Thread(target=self._run, name="https", daemon=True)
        self._thread.start()
        log.info("listening on https://%s:%d (UI and API)", self._host, self._port)

    def _run(self) -> None:
        try:
            self._server.serve()
        except Exception:  # pragma: no cover - logged, the daemon goes on with plain HTTP
            log.exception("https loop ended")

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.stop()
        if self._thread:
            self._thread.join(2)
        self._server = None
