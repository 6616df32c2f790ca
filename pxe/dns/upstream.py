"""Forwarding to the upstream resolver: one blocking exchange, bounded in time.

Owns the client side of DNS transport for names outside our zone: send the
client's query bytes unchanged (so its ID, RD bit and EDNS options reach the
upstream) over UDP, accept only a reply with the same ID and QR=1 from the
connected peer, and retry over TCP when the reply is truncated and the client
asked over TCP (RFC 7766 section 5; TCP messages carry a two-octet length,
RFC 1035 section 4.2.2). Every call finishes within ``timeout`` seconds or
raises :class:`UpstreamError`; the caller answers SERVFAIL.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time

from pxe.dns.wire import Header

DEFAULT_PORT = 53


class UpstreamError(Exception):
    """The upstream did not give a usable answer in time."""


def parse_upstream(text: str) -> tuple[str, int] | None:
    """``"10.0.0.53"`` or ``"10.0.0.53:5353"`` -> (host, port); ``""`` -> None."""
    if not text:
        return None
    host, _, port = text.partition(":")
    ipaddress.ip_address(host)  # config.py validated it; fail loudly if not
    return host, int(port) if port else DEFAULT_PORT


def forward(query: bytes, upstream: tuple[str, int], timeout: float, tcp: bool) -> bytes:
    deadline = time.monotonic() + timeout
    reply = exchange_udp(query, upstream, deadline)
    if tcp and Header.parse(reply).tc:
        reply = exchange_tcp(query, upstream, deadline)
    return reply


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise UpstreamError("upstream timed out")
    return left


def exchange_udp(query: bytes, upstream: tuple[str, int], deadline: float) -> bytes:
    qid = struct.unpack_from("!H", query)[0]
    with socket.socket(_family(upstream[0]), socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(upstream)  # the kernel drops datagrams from anyone else
            sock.send(query)
            while True:
                sock.settimeout(_remaining(deadline))
                reply = sock.recv(65535)
                header = Header.parse(reply)
                if header is not None and header.qr and header.id == qid:
                    return reply
        except TimeoutError:
            raise UpstreamError("upstream timed out")
        except OSError as e:
            raise UpstreamError(f"upstream unreachable: {e}")


def exchange_tcp(query: bytes, upstream: tuple[str, int], deadline: float) -> bytes:
    try:
        with socket.create_connection(upstream, timeout=_remaining(deadline)) as sock:
            sock.sendall(struct.pack("!H", len(query)) + query)
            (length,) = struct.unpack("!H", _read_exact(sock, 2, deadline))
            return _read_exact(sock, length, deadline)
    except TimeoutError:
        raise UpstreamError("upstream timed out (tcp)")
    except OSError as e:
        raise UpstreamError(f"upstream unreachable (tcp): {e}")


def _read_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = b""
    while len(buf) < n:
        sock.settimeout(_remaining(deadline))
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise UpstreamError("upstream closed the TCP connection early")
        buf += chunk
    return buf
