"""A deliberately oversized upstream resolver for DNS abuse tests.

``python -m tests.dns_upstream ADDRESS PORT`` answers every question, over UDP
and TCP, with ``RECORDS`` TXT records of 100 octets each (about 4.3 kB),
whatever the query's size or EDNS buffer says: the upstream an amplification
attacker hopes for (a 29-octet query drew a 4,289-octet answer in the audit).
It prints ``READY`` once listening and the number of queries it saw as JSON
on SIGTERM. Test helper only: it runs inside a namespace a test created.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import sys
import threading

from dnslib import EDNS0, QTYPE, RR, TXT, DNSRecord

RECORDS = 40


def answer(data: bytes) -> bytes:
    query = DNSRecord.parse(data)
    reply = query.reply(ra=1, aa=0)
    for i in range(RECORDS):
        text = f"{i:03d}-" + "x" * 96
        reply.add_answer(RR(query.q.qname, QTYPE.TXT, rdata=TXT(text), ttl=300))
    if any(rr.rtype == QTYPE.OPT for rr in query.ar):  # an EDNS query gets an EDNS reply
        reply.add_ar(EDNS0(udp_len=4096))
    return reply.pack()


def serve(address: str, port: int) -> None:
    seen = {"udp": 0, "tcp": 0}
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((address, port))
    tcp = socket.create_server((address, port))

    def udp_loop() -> None:
        while True:
            data, peer = udp.recvfrom(65535)
            seen["udp"] += 1
            udp.sendto(answer(data), peer)

    def tcp_loop() -> None:
        while True:
            conn, _ = tcp.accept()
            with conn:
                (n,) = struct.unpack("!H", conn.recv(2))
                data = b""
                while len(data) < n:
                    data += conn.recv(n - len(data))
                seen["tcp"] += 1
                reply = answer(data)
                conn.sendall(struct.pack("!H", len(reply)) + reply)

    for loop in (udp_loop, tcp_loop):
        threading.Thread(target=loop, daemon=True).start()
    print("READY", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
