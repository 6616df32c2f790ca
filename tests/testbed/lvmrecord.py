"""The LVM fixtures' recipe: commands run on the storage VM, outputs kept as unit-test fixtures.

Owns the list of commands (a scratch VG ``san`` on its own blank virtio disk)
whose outputs are tests/unit/fixtures/storage/lvm-vm/*, and running it over
an SSH runner. :func:`run_recipe` either writes the files (``record``), or
returns each live output beside the committed one so the test bed checks the
fixtures still say what this lvm2 says. Re-record with
``PROVISIOND_RECORD_LVM=1 pytest tests/testbed/test_storage_host_vm.py -k fixtures``.

``lvcreate-no-dm.txt`` is lvm2's real answer when the kernel lacks a
device-mapper target: ``dm_thin_pool`` is unloaded (no thin pool exists yet)
and lvcreate runs in a mount namespace where ``modprobe`` is ``/bin/false``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.unit import lvmfixtures

VG = "san"
LVS = ("lvs", "--reportformat", "json", "-o", "lv_name,lv_size,origin,pool_lv,lv_attr",
       "--units", "b", "--nosuffix", VG)  # fmt: skip
VGS = ("vgs", "--reportformat", "json", "-o", "vg_name,vg_size,vg_free", "--units", "b",
       "--nosuffix", VG)  # fmt: skip
NO_MODPROBE = "mount --bind /bin/false /sbin/modprobe && exec "


@dataclass(frozen=True)
class Step:
    fixture: str  # file name under lvm-vm/, "" for a setup step (must succeed)
    argv: tuple[str, ...]
    rc: int = 0  # the exit status the step must give

    def command(self) -> str:
        return " ".join(self.argv)


def recipe(device: str) -> tuple[Step, ...]:
    lv = ("lvcreate", "-y")
    return (
        Step("lvs-vg-missing.txt", LVS, rc=5),
        Step("", ("vgcreate", "-y", VG, device)),
        Step("lvs-empty.json", LVS),
        Step("", ("modprobe", "-r", "dm_thin_pool")),
        Step(
            "lvcreate-no-dm.txt",
            ("unshare", "-m", "sh", "-c", f"{NO_MODPROBE}lvcreate -y -L 64m -T {VG}/pool0"),
            rc=3,
        ),
        Step("", ("modprobe", "dm_thin_pool")),
        Step("", (*lv, "-L", "64m", "-n", "golden-win2022", VG)),
        Step("", ("lvcreate", "-s", "-n", "host07", "-L", "64m", f"{VG}/golden-win2022")),
        Step("", (*lv, "-L", "16m", "-n", "scratch", VG)),
        Step("lvs-classic.json", LVS),
        Step("", (*lv, "-L", "256m", "-T", f"{VG}/pool0")),
        Step("", (*lv, "-V", "128m", "-T", f"{VG}/pool0", "-n", "golden-debian12")),
        Step("", ("lvcreate", "-s", "-kn", "-n", "host01", f"{VG}/golden-debian12")),
        Step("", ("lvcreate", "-s", "-n", "host02", f"{VG}/golden-debian12")),
        Step("lvs-thin.json", LVS),
        Step("vgs.json", VGS),
        Step("lvcreate-exists.txt", (*lv, "-L", "16m", "-n", "scratch", VG), rc=5),
        Step("lvcreate-no-space.txt", (*lv, "-L", "64g", "-n", "huge", VG), rc=5),
        Step("", ("vgremove", "-y", "-ff", VG)),
        Step("", ("pvremove", "-y", device)),
    )


def run_recipe(ssh, device: str, record: bool) -> list[tuple[str, str, str]]:
    """Run the recipe on the host; write fixtures (``record``) or return (name, live, committed)."""
    kernel = ssh.run(["uname", "-r"]).stdout.strip()
    version = ssh.run(["lvm", "version"]).stdout.splitlines()[0].split(":", 1)[1].strip()
    out = []
    for step in recipe(device):
        res = ssh.run(list(step.argv), check=False, timeout=120)
        if res.rc != step.rc:
            raise AssertionError(f"{step.command()}: exit {res.rc}, wanted {step.rc}: "
                                 f"{res.stderr.strip()}")  # fmt: skip
        if not step.fixture:
            continue
        stream = "stdout" if res.rc == 0 else "stderr"
        text = res.stdout if res.rc == 0 else res.stderr
        if record:
            header = {
                "recorded on": "the test bed's storage VM (tests/testbed/lvmrecord.py, run by "
                "tests/testbed/test_storage_host_vm.py)",
                "command": step.command(),
                "exit status": str(res.rc),
                "stream": stream,
                "lvm2": version,
                "kernel": kernel,
            }
            (lvmfixtures.DIR / step.fixture).write_text(lvmfixtures.dumps(header, text))
        else:
            out.append((step.fixture, text, lvmfixtures.load(step.fixture).output))
    return out
