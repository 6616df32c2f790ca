"""The agent's install command (commands.d/install.sh): its pure pieces under busybox sh.

Partition device names, and the post-install steps: run in name order with
TARGET set, each logged with its exit code, the first failure stops the rest.
The disk-touching steps run in the QEMU test (tests/testbed/test_template_vm.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "initrd/rootfs/usr/lib/provisiond"
BUSYBOX = shutil.which("busybox")

pytestmark = pytest.mark.skipif(
    BUSYBOX is None, reason="busybox not on PATH (apt-get install busybox-static)"
)


def sh(script: str, tmp: Path) -> subprocess.CompletedProcess:
    prelude = (f". {AGENT}/lib/common.sh; . {AGENT}/lib/http.sh; "
               f". {AGENT}/commands.d/install.sh; ")  # fmt: skip
    env = {"PATH": os.environ["PATH"], "AGENT_LIB": str(AGENT), "PROVISIOND_RUN": str(tmp),
           "PROVISIOND_CONSOLE": str(tmp / "console")}  # fmt: skip
    return subprocess.run([BUSYBOX, "sh", "-c", prelude + script], env=env, capture_output=True,
                          text=True, timeout=30)  # fmt: skip


@pytest.mark.parametrize(
    "disk,n,dev",
    [("/dev/sda", 1, "/dev/sda1"), ("/dev/vda", 2, "/dev/vda2"),
     ("/dev/nvme0n1", 1, "/dev/nvme0n1p1"), ("/dev/mmcblk0", 3, "/dev/mmcblk0p3")],
)  # fmt: skip
def test_partition_device_names(tmp_path, disk, n, dev):
    assert sh(f"part_dev {disk} {n}", tmp_path).stdout.strip() == dev


def test_post_steps_run_in_order_with_exit_codes(tmp_path):
    bundle, target = tmp_path / "bundle", tmp_path / "target"
    (bundle / "post").mkdir(parents=True)
    target.mkdir()
    (bundle / "post" / "20-second.sh").write_text('echo second >>"$TARGET/order"\n')
    (bundle / "post" / "10-first.sh").write_text('echo first >>"$TARGET/order"\n')
    (bundle / "post" / "30-fails.sh").write_text("echo about to fail\nfalse\necho not reached\n")
    (bundle / "post" / "40-never.sh").write_text('echo never >>"$TARGET/order"\n')
    run = sh(f"B={bundle} TARGET={target} INSTALL_TMP={tmp_path}; install_post", tmp_path)
    assert run.returncode == 1
    lines = run.stdout.splitlines()
    assert "post 10-first.sh: exit 0" in lines and "post 20-second.sh: exit 0" in lines
    assert "post 30-fails.sh: exit 1" in lines and "    about to fail" in lines
    assert lines[-1] == "install failed: post-install step 30-fails.sh exited 1"
    assert "not reached" not in run.stdout
    assert (target / "order").read_text() == "first\nsecond\n"
