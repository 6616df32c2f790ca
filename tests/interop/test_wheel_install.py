"""``pip install`` of the built wheel gives a working provisiond (no checkout needed).

Owns the new user's path: ``python -m build`` makes the wheel, a fresh venv
outside the checkout installs it, and the installed ``provisiond`` runs
``--help``, ``init``, ``template show``, ``initrd build`` (the shipped
build.sh and rootfs) and ``serve`` in a network namespace, where ``/healthz``,
a vendored UI file and the boot script of a new MAC are fetched with curl.

The fresh venv gets the wheel with ``--no-deps``; its third-party
dependencies come from this test run's own environment through a ``.pth``
line (its site-packages only: the editable install's finder is not loaded),
so the test needs no package index. Every import of provisiond, pxe, storage
and web is checked to come from the fresh venv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.daemonlab import LabDaemon, lab_config
from tests.netlab import Lab

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
MAC = "52:54:00:77:88:01"
PACKAGES = ("provisiond", "pxe", "storage", "web")


def _run(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kw)
    assert res.returncode == 0, (
        f"{' '.join(cmd)} (exit {res.returncode}):\n{res.stdout}{res.stderr}"
    )
    return res


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv outside the checkout with the freshly built wheel installed."""
    pytest.importorskip("build", reason="needs the 'build' package (pip install -e '.[test]')")
    if not (REPO / "web" / "static" / "vendor" / "xterm.js").exists():
        pytest.skip(reason="web/static/vendor is empty: run `bash web/vendor.sh` (make vendor)")
    work = tmp_path_factory.mktemp("wheel")
    dist = work / "dist"
    # sdist first, then the wheel from the unpacked sdist (no build/ left in the checkout,
    # and the sdist's contents are checked too)
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)], work, timeout=240)
    wheels = list(dist.glob("provisiond-*.whl"))
    assert len(wheels) == 1, wheels
    v = work / "venv"
    _run([sys._base_executable, "-m", "venv", str(v)], work, timeout=120)
    _run([str(v / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheels[0])],
         work, timeout=120)  # fmt: skip
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(_run([str(v / "bin" / "python"), "-c", purelib], work).stdout.strip())
    (site / "zz-provisiond-test-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return v


def test_installed_packages_come_from_the_venv_not_the_checkout(venv):
    code = "import " + ", ".join(PACKAGES) + "; print('\\n'.join(m.__file__ for m in (" + (
        ", ".join(PACKAGES) + ")))"
    )  # fmt: skip
    files = _run([str(venv / "bin" / "python"), "-c", code], venv).stdout.split()
    assert len(files) == len(PACKAGES)
    for f in files:
        assert Path(f).resolve().is_relative_to(venv.resolve()), f


def test_help_and_shipped_files(venv):
    help_text = _run([str(venv / "bin" / "provisiond"), "--help"], venv).stdout
    for command in ("serve", "init", "initrd", "template", "resource"):
        assert command in help_text
    code = (
        "from provisiond import shipped, db; import web; from pathlib import Path\n"
        "print(shipped.initrd_build_script()); print(shipped.templates_dir())\n"
        "print(db.MIGRATIONS); print(Path(web.__file__).parent / 'static' / 'vendor')\n"
    )
    paths = [Path(p) for p in _run([str(venv / "bin" / "python"), "-c", code], venv).stdout.split()]
    build_sh, templates, migrations, vendor = paths
    for p in paths:
        assert p.resolve().is_relative_to(venv.resolve()), p
    assert (build_sh.parent / "rootfs" / "init").is_file()
    assert (build_sh.parent / "rootfs" / "usr" / "lib" / "provisiond" / "agent").is_file()
    assert (build_sh.parent / "modules.list").is_file()
    assert "--kernel" in _run(["bash", str(build_sh), "--help"], venv).stdout
    assert (templates / "ipxe" / "kernel.ipxe.j2").is_file()
    assert list((templates / "install").glob("*/set.toml"))
    assert (migrations / "env.py").is_file() and (migrations / "script.py.mako").is_file()
    assert list((migrations / "versions").glob("0001_*.py"))
    assert (vendor / "xterm.js").is_file()
    unit = _run([str(venv / "bin" / "provisiond"), "systemd-unit"], venv).stdout
    assert f"ExecStart={venv / 'bin' / 'provisiond'} --config " in unit, unit


def _initrd_inputs() -> str | None:
    """The newest kernel the initrd can be built for, or None (then the build step skips)."""
    mods = Path("/lib/modules")
    found = [k.name for k in mods.iterdir() if Path(f"/boot/vmlinuz-{k.name}").exists()
             ] if mods.is_dir() else []  # fmt: skip
    if not found or not Path("/bin/busybox").exists() or not shutil.which("cpio"):
        return None
    return max(found, key=lambda v: [int(p) for p in v.replace("-", ".").split(".") if p.isdigit()])


def test_init_initrd_build_serve_boot_script(venv, tmp_path):
    if not shutil.which("curl"):
        pytest.skip(reason="needs curl (apt-get install curl)")
    kver = _initrd_inputs()
    if kver is None:
        pytest.skip(reason="no kernel + busybox-static + cpio to build the initrd "
                    "(apt-get install linux-image-amd64 busybox-static cpio)")  # fmt: skip
    with Lab("wheel") as lab:
        d = LabDaemon(lab, tmp_path, lab_config(lab, tmp_path / "state"),
                      provisiond=str(venv / "bin" / "provisiond"))  # fmt: skip
        d.cli("init")
        assert "preseed" in d.cli("template", "show", "debian-preseed").stdout
        out = d.cli("initrd", "build", "--kernel-version", kver).stdout
        assert "initrd: wrote" in out, out
        assert "registered kernel 'agent'" in out, out
        kernel_dir = tmp_path / "state" / "boot" / "kernels" / "agent"
        assert (kernel_dir / "initrd.img").stat().st_size > 1_000_000
        d.start()
        try:
            client = lab.add_client(mac=MAC)
            ip = d.dhcp_boot(
                client
            )  # a PXE boot (busybox udhcpc): the script's token is this boot's
            code, body = d.http(client, "/healthz")
            assert (code, body.strip()) == (200, '{"status":"ok"}')
            code, body = d.http(client, "/static/vendor/xterm.js")
            assert code == 200 and "Terminal" in body
            code, script = d.boot_script(client, MAC, source=ip)
            assert code == 200, script
            assert script.startswith("#!ipxe"), script
            assert "kernels/agent/vmlinuz" in script and "provisiond.token=" in script, script
        finally:
            d.stop()
