"""One read transfer as a state machine, without sockets (sans-IO).

This module owns the sending side of RFC 1350 section 2 with the windowing
of RFC 7440: which DATA blocks go out after an ACK, what is retransmitted on
a timeout, and when the transfer is done or has failed. The server feeds it
ACKs and clock ticks and sends the datagrams it returns; a transfer never
touches a socket, so it is unit-tested with plain calls.

Block numbers are absolute inside the transfer (0 = the OACK, 1 = the first
DATA) and only their low 16 bits go on the wire, so files of more than 65535
blocks roll over to block 0 (:func:`pxe.tftp.codec.absolute_block`).

Sorcerer's Apprentice (RFC 1123 section 4.2.3.1): a duplicate or old ACK
never triggers a retransmission; only the timer does. An ACK for a block
inside the window that is not its last (RFC 7440 section 4: the client
missed a block) restarts the window after that block.
"""

from __future__ import annotations

import enum

from pxe.tftp.codec import OptionAck, Options, Params, absolute_block, data_header
from pxe.tftp.files import Source

Datagram = tuple[bytes | memoryview, ...]  # buffers gathered into one datagram (sendmsg)


class State(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Transfer:
    """Send ``source`` with the negotiated ``params`` (after an OACK if any)."""

    def __init__(
        self, source: Source, params: Params, oack: Options = (), max_retries: int = 5
    ) -> None:
        self.source, self.params, self.max_retries = source, params, max_retries
        self.oack = OptionAck(oack).pack() if oack else b""
        # RFC 1350 section 6: a block shorter than blksize ends the transfer,
        # so a file of exactly N*blksize bytes ends with an empty block N+1.
        self.last_block = source.size // params.blksize + 1
        self.acked = -1 if self.oack else 0  # highest block the client confirmed
        self.sent = 0  # highest block sent
        self.retries = 0
        self.retransmits = 0
        self.deadline = 0.0
        self.state = State.RUNNING
        self.reason = ""

    def start(self, now: float) -> list[Datagram]:
        """The first datagrams: the OACK (RFC 2347), or the first window of DATA."""
        return self._send(now)

    def on_ack(self, wire_block: int, now: float) -> list[Datagram]:
        """An ACK arrived from the peer's TID; return what to send next."""
        block = absolute_block(wire_block, self.acked, self.sent)
        if block is None:  # duplicate, old or future ACK: never resend on it
            return []
        self.acked, self.retries = block, 0
        if block >= self.last_block:
            self._finish(State.DONE, "")
            return []
        return self._send(now)

    def on_timer(self, now: float) -> list[Datagram]:
        """Called when ``now >= deadline``: resend the unacknowledged window."""
        if self.state is not State.RUNNING or now < self.deadline:
            return []
        if self.retries >= self.max_retries:
            self._finish(State.FAILED, f"timed out after {self.retries} retransmissions")
            return []
        self.retries += 1
        self.retransmits += 1
        return self._send(now)

    def abort(self, reason: str) -> None:
        self._finish(State.FAILED, reason)

    @property
    def bytes_sent(self) -> int:
        """Payload bytes the client has acknowledged."""
        return max(0, min(self.acked * self.params.blksize, self.source.size))

    def _send(self, now: float) -> list[Datagram]:
        self.deadline = now + self.params.timeout
        if self.acked < 0:
            return [(self.oack,)]
        first = self.acked + 1
        last = min(self.acked + self.params.windowsize, self.last_block)
        self.sent = last
        return [self._data(n) for n in range(first, last + 1)]

    def _data(self, block: int) -> Datagram:
        size = self.params.blksize
        return (data_header(block), self.source.read((block - 1) * size, size))

    def _finish(self, state: State, reason: str) -> None:
        if self.state is State.RUNNING:
            self.state, self.reason = state, reason
            self.source.close()
