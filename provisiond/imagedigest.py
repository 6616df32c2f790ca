"""The whole-image sha256 of a captured image, computed after the image is ready.

Owns :func:`verify` (pure: one read of an image against its manifest), and
:class:`Backfill`, the one background thread that gives captured images
their ``sha256`` once their capture job is done.

Why after: a capture verifies every chunk it receives against the sha256 the
agent sent with it, and the manifest lists those sha256s, so the image is
verifiable the moment the last chunk is written. The sha256 of the *raw*
image (zero runs included) adds nothing to that check, but it is one
sequential stream that cannot be split over cores: computed while chunks
arrived it was the capture's largest single cost (the daemon finished 6-12 s
after the agent's last byte on a loaded machine, BENCHMARKS.md). The image's
``sha256`` keeps its meaning everywhere — the sha256 of the raw image, as
``sha256sum`` of an exported file and an import's expected sha256 — it is
just ``None`` (shown as pending) for the seconds after a capture.

What needs it before it is there waits for it: the ``nc`` deploy transport
(the agent checks the raw copy of the disk against it) calls :func:`ensure`,
which computes it on the spot. A daemon restarted before the background
thread finished picks the image up again (:meth:`Backfill.sweep`).

The background read is also a check: every data chunk of the volume must
still have its manifest sha256 and every chunk the manifest does not list
must read as zero. A mismatch marks the image ``failed`` with an event
naming the chunk (nothing deploys it silently: the deploy's per-chunk checks
would fail it anyway).
"""

from __future__ import annotations

import queue
import shlex
import threading
import time
from collections.abc import Callable
from typing import BinaryIO

from provisiond import chunks, events, logs
from provisiond.db import Database
from provisiond.model import Image

log = logs.get("images")


class VerifyError(ValueError):
    """The volume does not hold what the manifest says (names the chunk)."""


def verify(
    fh: BinaryIO,
    m: chunks.Manifest,
    progress: Callable[[int, int], None] | None = None,
) -> str:
    """Check every chunk of ``fh`` against ``m``; return the whole image's sha256.

    Reads the image once (holes skipped: they are zero chunks), checks each
    data chunk's sha256 against its manifest entry and that every chunk the
    manifest does not list is zero. Raises :class:`VerifyError` naming the
    first chunk that differs.
    """
    scanned = chunks.scan(fh, m.size, m.chunk_size, progress=progress)
    want = {c.index: c.sha256 for c in m.chunks}
    got = {c.index: c.sha256 for c in scanned.chunks}
    for index in sorted(set(want) | set(got)):
        if want.get(index) != got.get(index):
            if index not in got:
                raise VerifyError(f"chunk {index} is zero in the volume, the manifest lists data")
            if index not in want:
                raise VerifyError(f"chunk {index} holds data the manifest does not list")
            raise VerifyError(
                f"chunk {index}: sha256 {got[index]} in the volume, {want[index]} in the manifest"
            )
    if m.sha256 and m.sha256 != scanned.sha256:  # the manifest names a whole sha256 already
        raise VerifyError(f"whole image sha256 {scanned.sha256}, the manifest says {m.sha256}")
    return scanned.sha256


def _pending(img: Image) -> bool:
    return img.sha256 is None and img.manifest is not None and img.volume is not None


def ensure(db: Database, image_id: int, hasher: Callable[[str, int], str] | None = None) -> str:
    """The image's whole sha256, computed now (and stored) when it is still pending.

    ``hasher(path, size)`` reads a volume that is not local (a storage
    host); by default the volume is read here and checked against the
    manifest (:func:`verify`).
    """
    with db.reader() as s:
        img = s.get(Image, image_id)
        if img is None:
            raise VerifyError(f"image {image_id} does not exist")
        if img.sha256 or not _pending(img):
            return img.sha256 or ""
        m = chunks.Manifest.from_json(img.manifest)
        path, name = img.volume.path, img.name
    try:
        if hasher is not None:
            digest = hasher(path, m.size)
        else:
            with open(path, "rb") as fh:
                digest = verify(fh, m)
    except VerifyError as exc:
        with db.transaction() as s:
            img = s.get(Image, image_id)
            if img is not None:
                img.state = "failed"
                events.record(s, "daemon", "image.verify_failed", name, str(exc)[:200])
        log.error("image %s: the volume does not match its manifest: %s", name, exc)
        raise
    with db.transaction() as s:
        img = s.get(Image, image_id)
        if img is not None and img.sha256 is None:
            img.sha256 = digest
            img.manifest = {**(img.manifest or {}), "sha256": digest}
    log.info("image %s: sha256 %s (computed after its capture)", name, digest)
    return digest


class Backfill:
    """One daemon thread that fills in the sha256 of images queued by :meth:`submit`.

    One at a time: a second capture finishing meanwhile waits in the queue
    rather than competing for the disk.
    """

    def __init__(self, db: Database, hasher_for: Callable[[int], Callable | None] | None = None):
        self.db = db
        self.hasher_for = hasher_for or (lambda _image_id: None)
        self._q: queue.Queue[int] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, image_id: int) -> None:
        with self._lock:  # the thread ends only under this lock, with the queue empty
            self._q.put(image_id)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="image-sha", daemon=True)
                self._thread.start()

    def sweep(self) -> int:
        """Queue every image whose sha256 is still pending (after a restart); how many."""
        with self.db.reader() as s:
            ids = [i.id for i in s.query(Image).filter(Image.sha256.is_(None)) if _pending(i)]
        for image_id in ids:
            self.submit(image_id)
        return len(ids)

    def _run(self) -> None:
        while True:
            try:
                image_id = self._q.get(timeout=5)
            except queue.Empty:
                with self._lock:
                    if self._q.empty():
                        self._thread = None
                        return
                continue
            try:
                ensure(self.db, image_id, self.hasher_for(image_id))
            except Exception as exc:  # the thread goes on with the next image
                log.warning("image %s: whole sha256 not computed: %s", image_id, exc)
            finally:
                self._q.task_done()

    def idle(self, timeout: float = 60.0) -> bool:
        """Wait until every queued image is done (tests); True when they are."""
        deadline = time.monotonic() + timeout
        while self._q.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self._q.unfinished_tasks


def remote_hasher(runner) -> Callable[[str, int], str]:
    """``sha256sum`` of a volume on a storage host (its chunks were checked there)."""

    def run(path: str, size: int) -> str:
        cmd = f"head -c {int(size)} {shlex.quote(path)} | sha256sum"
        out = runner.run(["sh", "-c", cmd], timeout=max(600.0, size / 50e6)).stdout
        digest = out.split()[0] if out.split() else ""
        if len(digest) != 64:
            raise VerifyError(f"sha256sum {path} on the storage host answered {out[:80]!r}")
        return digest

    return run
