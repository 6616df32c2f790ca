"""Root file systems for FAI-style installs, built with mmdebstrap and cached.

Owns the recipes (:data:`RECIPES`; ``debian-12``: a minimal Debian 12 with a
kernel, openssh-server, extlinux, systemd-boot and the provisiond first-boot
unit; ``debian-12-storage``: the storage host of the test bed, with lvm2,
thin-provisioning-tools, rtslib-fb/targetcli-fb and tgt, booted by its own
init), building one (:func:`build`: ``mmdebstrap`` from Debian's packages,
using this host's APT sources, into a ``.tar.zst``), and the cache that makes
a fresh machine build it once: ``<cache>/<name>-<key>/`` where ``key`` is the
hash of every input (recipe, hook text, APT sources, mmdebstrap version).
The cache is ``$PROVISIOND_ROOTFS_CACHE`` or ``/var/cache/provisiond/rootfs``,
outside any checkout. :func:`lookup` answers what the install serves.

The first-boot unit calls ``$PROVISIOND_CALLBACK`` once with the one-time
token the template wrote to ``/etc/provisiond/firstboot.env`` (with the
machine's hostname and its new SSH host key), then deletes that file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from provisiond.errors import Invalid, NotFound
from provisiond.installs import RootfsRef

DEFAULT_CACHE = Path("/var/cache/provisiond/rootfs")
ARCHIVE = "rootfs.tar.zst"

FIRSTBOOT_SCRIPT = r"""#!/bin/sh
# provisiond-firstboot: tell provisiond that the installed OS is up (once).
set -u
. /etc/provisiond/firstboot.env
key=$(cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub 2>/dev/null)
n=0
while [ "$n" -lt 120 ]; do
	if curl -fsS -m 10 -o /dev/null -X POST -H "Authorization: Bearer $PROVISIOND_TOKEN" \
		--data-urlencode "hostname=$(hostname)" --data-urlencode "hostkey=$key" \
		"$PROVISIOND_CALLBACK"; then
		rm -f /etc/provisiond/firstboot.env
		echo "provisiond-installed: reported in as $(hostname)" >/dev/console
		exit 0
	fi
	n=$((n + 1))
	sleep 2
done
echo "provisiond-installed: could not report in to $PROVISIOND_CALLBACK" >/dev/console
exit 1
"""

FIRSTBOOT_UNIT = """[Unit]
Description=Report the installed OS to provisiond (once)
ConditionPathExists=/etc/provisiond/firstboot.env
Wants=network-online.target
After=network-online.target ssh.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/provisiond-firstboot
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""

SSH_KEYGEN = """[Service]
ExecStartPre=
ExecStartPre=/usr/bin/ssh-keygen -A
ExecStartPre=/usr/sbin/sshd -t
"""

#: module directories a server install does not need (smaller image, faster unpack):
#: sound, video capture, GPUs, radios, industrial and embedded buses, cluster file systems
PRUNE = (
    "sound", "drivers/gpu", "drivers/media", "drivers/staging", "drivers/infiniband",
    "drivers/iio", "drivers/comedi", "drivers/mtd", "drivers/isdn", "drivers/bluetooth",
    "drivers/nfc", "drivers/w1", "drivers/fpga", "drivers/gnss", "drivers/most",
    "drivers/greybus", "drivers/input/touchscreen", "drivers/input/joystick",
    "drivers/input/tablet", "drivers/net/wireless", "drivers/net/can", "drivers/net/wwan",
    "drivers/net/ieee802154", "drivers/net/hamradio", "drivers/net/fddi", "drivers/net/arcnet",
    "drivers/net/usb", "drivers/usb/serial", "drivers/usb/gadget", "drivers/usb/misc",
    "drivers/platform/chrome", "drivers/platform/surface",
    "drivers/leds", "drivers/power/supply", "drivers/thunderbolt", "drivers/atm",
    "net/bluetooth", "net/wireless", "net/mac80211", "net/nfc", "net/ieee802154",
    "net/6lowpan", "net/can", "net/rxrpc", "net/ceph", "net/atm", "net/mac802154",
    "fs/ocfs2", "fs/gfs2", "fs/ceph", "fs/afs", "fs/coda", "fs/ubifs", "fs/jffs2",
    "fs/nilfs2", "fs/orangefs", "fs/dlm",
)  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    name: str
    suite: str
    packages: tuple[str, ...]
    hooks: tuple[str, ...]  # customize hooks ("$1" is the root)
    dpkg_excludes: tuple[str, ...] = ("/usr/share/man/*", "/usr/share/doc/*",
                                      "/usr/share/info/*", "/usr/share/locale/*")  # fmt: skip


def _write(path: str, text: str, mode: str = "0644") -> str:
    return f"install -D -m {mode} /dev/stdin \"$1{path}\" <<'PROVISIOND_EOF'\n{text}PROVISIOND_EOF"


DEBIAN_12 = Recipe(
    name="debian-12",
    suite="bookworm",
    packages=(
        "systemd-sysv",
        "udev",
        "dbus",
        "linux-image-amd64",
        "openssh-server",
        "curl",
        "e2fsprogs",
        "dosfstools",
        "extlinux",
        "syslinux-common",
        "systemd-boot-efi",
        "iproute2",
        "zstd",
        "kmod",
        "initramfs-tools",
    ),
    hooks=(
        _write("/usr/local/sbin/provisiond-firstboot", FIRSTBOOT_SCRIPT, "0755"),
        _write("/etc/systemd/system/provisiond-firstboot.service", FIRSTBOOT_UNIT),
        _write("/etc/systemd/system/ssh.service.d/provisiond-keygen.conf", SSH_KEYGEN),
        'chroot "$1" systemctl enable provisiond-firstboot.service systemd-networkd.service '
        "systemd-networkd-wait-online.service",
        'rm -f "$1"/etc/ssh/ssh_host_* "$1"/etc/hostname; : > "$1"/etc/machine-id',
        "for d in " + " ".join(PRUNE) + '; do rm -rf "$1"/usr/lib/modules/*/kernel/$d; done',
        'for k in "$1"/usr/lib/modules/*; do chroot "$1" depmod "${k##*/}"; done',
        'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*.log',
    ),
)

#: PID 1 of the storage host VM (no systemd: boots in seconds under TCG). Reads its address
#: from the kernel command line (pv.addr=CIDR) and its SSH host key and authorized key from
#: QEMU fw_cfg (opt/provisiond/hostkey, opt/provisiond/authkey), so a test pins a known key.
STORAGE_INIT = r"""#!/bin/sh
# provisiond-storage-init: a storage host (LVM + LIO + tgt over SSH) without systemd.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev 2>/dev/null
mount -t tmpfs tmpfs /run; mkdir -p /dev/pts /run/sshd /run/lvm /run/lock /var/run/tgtd
mount -t devpts devpts /dev/pts
mount -o remount,rw /
for m in virtio_blk virtio_net qemu_fw_cfg dm_mod dm_snapshot dm_thin_pool dm_bufio configfs \
	target_core_mod target_core_iblock target_core_file iscsi_target_mod; do modprobe "$m"; done
mount -t configfs none /sys/kernel/config 2>/dev/null
hostname storage
ip link set lo up
for w in $(cat /proc/cmdline); do
	case "$w" in pv.addr=*) addr=${w#pv.addr=} ;; pv.gw=*) gw=${w#pv.gw=} ;; esac
done
nic=$(ls /sys/class/net | grep -v '^lo$' | head -n1)
ip link set "$nic" up
[ -n "${addr:-}" ] && ip addr add "$addr" dev "$nic"
[ -n "${gw:-}" ] && ip route add default via "$gw"
fw=/sys/firmware/qemu_fw_cfg/by_name/opt/provisiond
mkdir -p -m 700 /root/.ssh
[ -r $fw/authkey/raw ] && cat $fw/authkey/raw > /root/.ssh/authorized_keys
if [ -r $fw/hostkey/raw ]; then
	install -m 600 $fw/hostkey/raw /etc/ssh/ssh_host_ed25519_key
	ssh-keygen -y -f /etc/ssh/ssh_host_ed25519_key > /etc/ssh/ssh_host_ed25519_key.pub
fi
ssh-keygen -A >/dev/null 2>&1
if /usr/sbin/sshd -o PermitRootLogin=prohibit-password -o UseDNS=no \
	-o HostKey=/etc/ssh/ssh_host_ed25519_key; then
	echo "provisiond-storage: ready on ${addr:-no address} (kernel $(uname -r))" > /dev/console
else
	echo "provisiond-storage: FAILED: sshd did not start" > /dev/console
fi
while :; do setsid sh -c 'exec sh </dev/console >/dev/console 2>&1' || sleep 5; done
"""

LVM_LOCAL = """activation {
	udev_sync = 0
	udev_rules = 0
}
devices {
	obtain_device_list_from_udev = 0
}
"""

DEBIAN_12_STORAGE = Recipe(
    name="debian-12-storage",
    suite="bookworm",
    packages=(
        "linux-image-amd64",
        "initramfs-tools",
        "kmod",
        "udev",
        "iproute2",
        "openssh-server",
        "lvm2",
        "thin-provisioning-tools",
        "mount",
        "python3",
        "python3-rtslib-fb",
        "targetcli-fb",
        "tgt",
    ),
    hooks=(
        _write("/usr/local/sbin/provisiond-storage-init", STORAGE_INIT, "0755"),
        # no udevd on the host: LVM makes its own /dev/VG/LV nodes
        _write("/etc/lvm/lvmlocal.conf", LVM_LOCAL),
        # a small initrd (virtio + ext4 only) unpacks in seconds under TCG, not half a minute
        _write("/etc/initramfs-tools/conf.d/provisiond", "MODULES=list\n"),
        _write("/etc/initramfs-tools/modules", "virtio_pci\nvirtio_blk\next4\n"),
        'chroot "$1" update-initramfs -u -k all',
        'rm -f "$1"/etc/ssh/ssh_host_* "$1"/etc/hostname; : > "$1"/etc/machine-id',
        "for d in " + " ".join(PRUNE) + '; do rm -rf "$1"/usr/lib/modules/*/kernel/$d; done',
        'for k in "$1"/usr/lib/modules/*; do chroot "$1" depmod "${k##*/}"; done',
        'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*.log',
    ),
)
RECIPES = {r.name: r for r in (DEBIAN_12, DEBIAN_12_STORAGE)}


def cache_dir() -> Path:
    return Path(os.environ.get("PROVISIOND_ROOTFS_CACHE") or DEFAULT_CACHE)


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise NotFound(f"rootfs {name!r}: known recipes are {', '.join(RECIPES)}", "rootfs")
    return RECIPES[name]


def apt_sources() -> list[Path]:
    """This host's APT sources: what mmdebstrap fetches from (the only reachable mirror)."""
    found = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file() and any(
        ln.strip().startswith("deb ") for ln in legacy.read_text().splitlines()
    ):
        found.append(legacy)
    return found


def _mmdebstrap_version() -> str:
    """The ``$VERSION`` line of the mmdebstrap script (read, not run: lookups stay cheap)."""
    path = shutil.which("mmdebstrap")
    if path is None:
        return ""
    for line in Path(path).read_text(errors="replace").splitlines():
        if "$VERSION" in line and "=" in line:
            return line.strip()
    return ""


def input_key(r: Recipe, sources: list[Path] | None = None) -> str:
    """sha256 of every input of a build: same inputs, same cache entry."""
    sources = apt_sources() if sources is None else sources
    doc = {
        "recipe": [r.name, r.suite, list(r.packages), list(r.hooks), list(r.dpkg_excludes)],
        "sources": [p.read_text() for p in sources],
        "mmdebstrap": _mmdebstrap_version(),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def entry_dir(r: Recipe, key: str) -> Path:
    return cache_dir() / f"{r.name}-{key[:16]}"


def lookup(name: str) -> RootfsRef | None:
    """The built archive of ``name`` for today's inputs, or None when not built."""
    r = recipe(name)
    meta = entry_dir(r, input_key(r)) / "meta.json"
    if not meta.is_file():
        return None
    data = json.loads(meta.read_text())
    return RootfsRef(name, data["sha256"], int(data["size"]))


def archive_path(name: str) -> Path:
    """Path of the archive to serve; NotFound names the command that builds it."""
    r = recipe(name)
    path = entry_dir(r, input_key(r)) / ARCHIVE
    if not path.is_file() or not (path.parent / "meta.json").is_file():
        raise NotFound(
            f"rootfs {name} is not built; run `provisiond rootfs build {name}`", "rootfs"
        )
    return path


def mmdebstrap_argv(r: Recipe, out: Path, sources: list[Path]) -> list[str]:
    argv = ["mmdebstrap", "--variant=apt", "--mode=root", "--format=tar",
            "--include=" + ",".join(r.packages)]  # fmt: skip
    argv += [f"--dpkgopt=path-exclude={p}" for p in r.dpkg_excludes]
    argv += ["--dpkgopt=path-include=/usr/share/doc/*/copyright"]
    argv += [f"--customize-hook={h}" for h in r.hooks]
    return [*argv, r.suite, str(out), *map(str, sources)]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def build(name: str, say: Callable[[str], None] = print, force: bool = False) -> RootfsRef:
    """Build (or find cached) the archive of recipe ``name``; progress lines go to ``say``."""
    r = recipe(name)
    if shutil.which("mmdebstrap") is None:
        raise Invalid("mmdebstrap is not installed: apt-get install mmdebstrap (or `make deps`)")
    sources = apt_sources()
    if not sources:
        raise Invalid("no APT sources on this host (/etc/apt/sources.list.d/*.sources)")
    key = input_key(r, sources)
    final = entry_dir(r, key)
    if (final / "meta.json").is_file() and not force:
        ref = lookup(name)
        say(f"rootfs {name}: cached in {final} ({ref.size / 2**20:.0f} MiB, inputs {key[:16]})")
        return ref
    final.parent.mkdir(parents=True, exist_ok=True)
    work = final.parent / f".{final.name}.{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    out = work / ARCHIVE
    say(f"rootfs {name}: building with mmdebstrap ({r.suite}, {len(r.packages)} packages, "
        f"inputs {key[:16]})")  # fmt: skip
    t0 = time.monotonic()
    try:
        _run(mmdebstrap_argv(r, work / "rootfs.tar", sources), say, t0)
        say(f"rootfs {name}: compressing (zstd -T0 -10)")
        subprocess.run(["zstd", "-q", "-T0", "-10", "--rm", str(work / "rootfs.tar"), "-o",
                        str(out)], check=True, timeout=1800)  # fmt: skip
        digest, size = _sha256(out), out.stat().st_size
        meta = {"name": name, "sha256": digest, "size": size, "key": key,
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip
        (work / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        work.rename(final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    say(f"rootfs {name}: {final / ARCHIVE} ({size / 2**20:.0f} MiB, sha256 {digest[:16]}) "
        f"in {time.monotonic() - t0:.0f} s")  # fmt: skip
    return RootfsRef(name, digest, size)


def _run(argv: list[str], say: Callable[[str], None], t0: float) -> None:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "LC_ALL": "C"})  # fmt: skip
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        tail = [*tail, line][-20:]
        if line.startswith(("I: ", "E: ", "W: ")):
            say(f"  [{time.monotonic() - t0:5.0f} s] {line}")
    if proc.wait() != 0:
        raise Invalid(f"mmdebstrap failed (exit {proc.returncode}):\n" + "\n".join(tail))
