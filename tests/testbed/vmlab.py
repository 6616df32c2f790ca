"""Helpers shared by the QEMU test-bed tests: a btrfs storage on a loop file, the CLI, the
console-order check and the UI tests' skip reasons (test modules import these, not each other).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

from vm import Vm

REPO = Path(__file__).resolve().parents[2]


def btrfs_storage(workdir: Path) -> Path:
    backing, mnt = workdir / "btrfs.img", workdir / "btrfs"
    with open(backing, "wb") as fh:
        fh.truncate(2 * 2**30)
    subprocess.run(["mkfs.btrfs", "-q", str(backing)], check=True, capture_output=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(backing), str(mnt)], check=True)
    return mnt / "images"


def cli(tb, *args: str, timeout: float = 180) -> str:
    """Run the test bed's ``provisiond`` CLI; a non-zero exit fails the test with its output."""
    res = tb.provisiond_cli(*args, timeout=timeout)
    assert res.returncode == 0, f"provisiond {' '.join(args)}:\n{res.stdout}{res.stderr}"
    return res.stdout


def cli_json(tb, *args: str):
    return json.loads(cli(tb, *args, "--json"))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def in_order(vm: Vm, patterns: list[str]) -> bool:
    """Whether console lines match ``patterns`` one after another (others in between)."""
    todo = iter(patterns)
    want = next(todo)
    for _, text in vm.console_lines():
        if re.search(want, text):
            want = next(todo, None)
            if want is None:
                return True
    return False


def _skip_reasons() -> list[str]:
    out = []
    for tool, pkg in (("chromium", "chromium"), ("chromedriver", "chromium-driver"),
                      ("dropbear", "dropbear-bin"), ("dropbearkey", "dropbear-bin"),
                      ("unshare", "util-linux")):  # fmt: skip
        if not shutil.which(tool):
            out.append(f"{tool} missing (apt-get install {pkg})")
    try:
        import selenium  # noqa: F401
    except ImportError:
        out.append("PyPI package selenium missing (.venv/bin/pip install selenium)")
    if not (REPO / "web/static/vendor/xterm.js").exists():
        out.append("front-end assets not vendored (run: bash web/vendor.sh)")
    return out
