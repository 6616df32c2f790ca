"""Image import: a raw or qcow2 file, or an http(s) URL, into a new backend volume.

``import_image(backend, name, source)`` returns ``Imported(volume, size, sha256)``.
raw: copied sparse-aware (holes stay holes on file/reflink volumes) with the
SHA-256 computed over every byte as it passes. qcow2: ``qemu-img convert -n
-O raw`` through the Runner into the created volume; its SHA-256 is of the
qcow2 file as supplied (what a publisher's checksum covers). URLs stream in
1 MiB chunks, hashed as they arrive; qcow2 downloads land in a temporary file
first (qemu-img needs random access). On any failure the new volume is deleted.

Trust: URLs go through :func:`storage.fetch.open_url` with the caller's
address check (``url_check``), applied at connect time to every hop. A qcow2
that names a backing file or an external data file is refused before it is
read: qemu-img would follow that name to any file on the server. Which
server paths may be imported at all is the caller's rule (provisiond checks
its import folders); errors show URLs through :func:`redact_url`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from typing import NamedTuple

from storage import remotewrite
from storage.backends.base import Backend, StorageError, Volume
from storage.fetch import Check, open_url, redact_url
from storage.runner import Runner
from storage.sparse import CHUNK, Progress, copy_fd

QCOW2_MAGIC = b"QFI\xfb"
HTTP_CHUNK = 1 << 20


class Imported(NamedTuple):
    volume: Volume
    size: int
    sha256: str


def _round512(n: int) -> int:
    return max(512, (n + 511) // 512 * 512)


def sniff(path: str) -> str:
    """ "qcow2" or "raw" from the file's first bytes."""
    with open(path, "rb") as f:
        return "qcow2" if f.read(4) == QCOW2_MAGIC else "raw"


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while buf := f.read(CHUNK):
            h.update(buf)
    return h.hexdigest()


def qcow2_virtual_size(path: str, runner: Runner) -> int:
    """The virtual size of a self-contained qcow2; one with a backing or data file is refused."""
    res = runner.run(["qemu-img", "info", "--output=json", "-f", "qcow2", path], timeout=60)
    info = json.loads(res.stdout)
    backing = info.get("backing-filename") or info.get("full-backing-filename")
    if backing:
        raise StorageError(
            f"qcow2 image has a backing file ({backing}); only self-contained images can be "
            "imported: flatten it first (qemu-img convert -O qcow2 IN OUT)"
        )
    data_file = (info.get("format-specific") or {}).get("data", {}).get("data-file")
    if data_file:
        raise StorageError(f"qcow2 image has an external data file ({data_file}); flatten it first")
    return int(info["virtual-size"])


def import_image(
    backend: Backend,
    name: str,
    source: str,
    *,
    fmt: str = "auto",
    progress: Progress | None = None,
    runner: Runner | None = None,
    expected_sha256: str | None = None,
    workdir: str | None = None,
    url_check: Check | None = None,
) -> Imported:
    """Import ``source`` (path or http(s) URL) as new volume ``name``; see module doc."""
    runner = runner or Runner()
    if backend.get(name) is not None:
        raise StorageError(f"volume {name} already exists; delete it first to re-import")
    if "://" in source:
        result = _import_url(backend, name, source, fmt, progress, runner, workdir, url_check)
    else:
        result = _import_file(backend, name, source, fmt, progress, runner)
    if expected_sha256 and result.sha256 != expected_sha256.lower():
        backend.delete(name)
        raise StorageError(f"sha256 mismatch for {redact_url(source)}: got {result.sha256}")
    return result


def _import_file(backend, name, path, fmt, progress, runner, sha: str | None = None) -> Imported:
    fmt = sniff(path) if fmt == "auto" else fmt
    if fmt not in ("raw", "qcow2"):
        raise StorageError(f"unsupported image format {fmt!r} (raw, qcow2)")
    with _volume_on_failure(backend, name):
        if fmt == "qcow2":
            return _import_qcow2(backend, name, path, progress, runner, sha)
        size = os.path.getsize(path)
        vol = backend.create(name, _round512(size))
        remote = getattr(backend, "runner", None)
        if getattr(remote, "remote", False):  # a storage host: chunks over SSH, each verified there
            return Imported(
                vol, vol.size, remotewrite.upload(remote, path, vol.path, size, progress)
            )
        h = hashlib.sha256()
        with open(path, "rb") as fs, open(vol.path, "r+b") as fd:
            zeroed = os.path.isfile(vol.path)
            copy_fd(fs.fileno(), fd.fileno(), size, progress=progress, hasher=h, dst_zeroed=zeroed)
            if zeroed and vol.size != size:
                os.ftruncate(fd.fileno(), vol.size)
            os.fsync(fd.fileno())
        return Imported(vol, vol.size, h.hexdigest())


def _import_qcow2(backend, name, path, progress, runner, sha) -> Imported:
    vsize = qcow2_virtual_size(path, runner)
    sha = sha or file_sha256(path)
    vol = backend.create(name, _round512(vsize))
    if progress:
        progress(0, vsize)
    argv = ["qemu-img", "convert", "-n", "-f", "qcow2", "-O", "raw"]
    if os.path.isfile(vol.path):  # fresh sparse file: let qemu-img skip zero writes
        argv.append("--target-is-zero")
    runner.run([*argv, path, vol.path], timeout=6 * 3600)
    if progress:
        progress(vsize, vsize)
    return Imported(vol, vol.size, sha)


def _import_url(backend, name, url, fmt, progress, runner, workdir, check) -> Imported:
    with tempfile.NamedTemporaryFile(dir=workdir, prefix="import-", suffix=".img") as tmp:
        h = hashlib.sha256()
        with open_url(url, check or (lambda _addr: None), timeout=30) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            done = 0
            while buf := resp.read(HTTP_CHUNK):
                h.update(buf)
                if buf.count(0) != len(buf):
                    os.pwrite(tmp.fileno(), buf, done)
                done += len(buf)
                if progress:
                    progress(done, total or done)
        if total and done != total:
            raise StorageError(f"download of {redact_url(url)} short: {done} of {total} bytes")
        os.ftruncate(tmp.fileno(), done)
        return _import_file(backend, name, tmp.name, fmt, None, runner, sha=h.hexdigest())


@contextlib.contextmanager
def _volume_on_failure(backend: Backend, name: str):
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            backend.delete(name)
        raise
