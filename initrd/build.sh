#!/bin/bash
# initrd/build.sh — build the provisiond idle-agent initrd, reproducibly.
#
# Owns: assembling <out>/initrd.img (gzip'd newc cpio) and <out>/vmlinuz from
#   - Debian busybox-static (/bin/busybox + applet symlinks),
#   - dropbear-bin (dropbear, dropbearkey), zstd, openssl, and for the "install"
#     command sfdisk (fdisk), mke2fs (e2fsprogs), mkfs.fat (dosfstools), with
#     their shared libraries, udp-receiver (udpcast: fan-out deploys),
#   - the NIC/disk kernel modules listed in initrd/modules.list (+ dependencies)
#     taken from the kernel being served,
#   - initrd/rootfs/ (/init, the agent, the udhcpc script, /etc files).
#
# Usage: build.sh [--kernel KVER] [--out DIR]      (or env KVER / OUT)
#   KVER defaults to the newest directory in /lib/modules; OUT to ./build/initrd.
#   SOURCE_DATE_EPOCH (default 0) fixes every timestamp in the archive: the same
#   inputs give a byte-identical initrd.img. No root is needed: ownership is
#   forced to 0:0 and /dev/console is written as a cpio entry, not with mknod.
# Progress lines go to stdout, prefixed "initrd: ". No keys or secrets are
# baked in: dropbear's host key is generated at boot by the agent.
set -euo pipefail
umask 022
export LC_ALL=C

HERE=$(cd "$(dirname "$0")" && pwd)
KVER=${KVER:-}
OUT=${OUT:-build/initrd}
EPOCH=${SOURCE_DATE_EPOCH:-0}
MODROOT=${MODROOT:-/lib/modules}
BOOTDIR=${BOOTDIR:-/boot}
BUSYBOX=${BUSYBOX:-/bin/busybox}
EXTRA_BINS=${EXTRA_BINS:-"/usr/sbin/dropbear /usr/bin/dropbearkey /usr/bin/zstd /usr/bin/openssl \
  /usr/sbin/sfdisk /usr/sbin/mke2fs /usr/sbin/mkfs.fat \
  /usr/sbin/partclone.extfs /usr/sbin/partclone.ntfs /usr/sbin/partclone.fat /usr/sbin/partclone.xfs \
  /usr/sbin/partclone.btrfs /usr/bin/socat /usr/bin/udp-receiver"}
# configuration files the extra binaries read (mke2fs: the ext4 feature defaults)
# (libgcc_s: glibc dlopens it when partclone's threads exit; ldd does not list it)
EXTRA_FILES=${EXTRA_FILES:-"/etc/mke2fs.conf /lib/x86_64-linux-gnu/libgcc_s.so.1"}

say() { printf 'initrd: %s\n' "$*"; }
die() { printf 'initrd: error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      -k|--kernel) KVER=${2:?--kernel needs a value}; shift 2 ;;
      -o|--out) OUT=${2:?--out needs a value}; shift 2 ;;
      -h|--help) usage; exit 0 ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
  done
  [ -n "$KVER" ] || KVER=$(ls "$MODROOT" 2>/dev/null | sort -V | tail -n 1)
  [ -n "$KVER" ] || die "no kernel found in $MODROOT"
  [ -d "$MODROOT/$KVER" ] || die "no modules for kernel $KVER in $MODROOT/$KVER"
  [ -f "$BOOTDIR/vmlinuz-$KVER" ] || die "no kernel image $BOOTDIR/vmlinuz-$KVER"
  [ -x "$BUSYBOX" ] || die "$BUSYBOX missing (apt-get install busybox-static)"
  for b in $EXTRA_BINS; do
    [ -x "$b" ] || die "$b missing (apt-get install dropbear-bin zstd openssl fdisk e2fsprogs dosfstools partclone socat udpcast)"
  done
  for f in $EXTRA_FILES; do [ -f "$f" ] || die "$f missing (apt-get install e2fsprogs libgcc-s1)"; done
}

# --- staging tree ------------------------------------------------------------

install_busybox() {
  install -D -m 0755 "$BUSYBOX" "$ST/bin/busybox"
  local n=0 a
  for a in $("$BUSYBOX" --list-full); do
    [ "$a" = bin/busybox ] && continue
    mkdir -p "$ST/$(dirname "$a")"
    ln -sfn /bin/busybox "$ST/$a"
    n=$((n + 1))
  done
  say "busybox $("$BUSYBOX" | head -n 1 | awk '{print $2}') with $n applets"
}

# Copy a dynamically linked binary and every library ldd resolves for it.
install_binary() {
  local bin=$1 lib
  install -D -m 0755 "$bin" "$ST$bin"
  for lib in $(ldd "$bin" | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i}'); do
    [ -e "$ST$lib" ] && continue
    mkdir -p "$ST$(dirname "$lib")"
    cp -L "$lib" "$ST$lib"
    chmod 0755 "$ST$lib"
  done
  say "binary $bin ($(ldd "$bin" | grep -c '/') libraries)"
}

# Print the module files (absolute paths, dependency order) for one module name.
# MODROOT other than /lib/modules must end in /lib/modules (modprobe -d).
module_files() {
  local base=${MODROOT%/lib/modules}
  modprobe -S "$KVER" ${base:+-d "$base"} --show-depends --ignore-install "$1" \
    2>/dev/null | awk '$1 == "insmod" {print $2}'
}

# Copy one module file into the staging tree, decompressed to plain .ko.
copy_module() {
  local ko=$1 rel=${1#*"/lib/modules/$KVER/"} dst
  dst="$ST/lib/modules/$KVER/${rel%.*}.ko"
  case "$rel" in
    *.ko) dst="$ST/lib/modules/$KVER/$rel"; install -D -m 0644 "$ko" "$dst" ;;
    *.ko.xz) mkdir -p "$(dirname "$dst")"; xz -dc "$ko" > "$dst" ;;
    *.ko.zst) mkdir -p "$(dirname "$dst")"; zstd -qdc "$ko" > "$dst" ;;
    *.ko.gz) mkdir -p "$(dirname "$dst")"; gzip -dc "$ko" > "$dst" ;;
    *) die "unexpected module file $ko" ;;
  esac
  echo "${dst#"$ST/lib/modules/$KVER/"}"
}

install_modules() {
  local list=$HERE/modules.list order=$ST/etc/provisiond/modules.load name ko rel
  local wanted=0 skipped=""
  mkdir -p "$ST/etc/provisiond" "$ST/lib/modules/$KVER"
  : > "$order"
  for name in $(sed 's/#.*//' "$list"); do
    wanted=$((wanted + 1))
    if [ -z "$(module_files "$name")" ]; then
      if grep -q "/${name//_/[-_]}\.ko" "$MODROOT/$KVER/modules.builtin" 2>/dev/null; then
        say "module $name is built into $KVER"
      else
        skipped="$skipped $name"
      fi
      continue
    fi
    for ko in $(module_files "$name"); do
      rel=$(copy_module "$ko")
      grep -qxF "$rel" "$order" || echo "$rel" >> "$order"
    done
  done
  for f in modules.builtin modules.builtin.modinfo modules.order; do
    [ -f "$MODROOT/$KVER/$f" ] && cp "$MODROOT/$KVER/$f" "$ST/lib/modules/$KVER/"
  done
  depmod -b "$ST" "$KVER"
  [ -z "$skipped" ] || say "note: not in kernel $KVER, skipped:$skipped"
  say "modules: $(wc -l < "$order") files for $wanted requested names ($KVER)"
}

install_rootfs() {
  cp -R "$HERE/rootfs/." "$ST/"
  # Normalise modes whatever the checkout's umask was: scripts 0755, data 0644.
  find "$ST/etc" "$ST/usr/share/udhcpc" "$ST/usr/lib/provisiond" -type f -exec chmod 0644 {} +
  chmod 0755 "$ST/init" "$ST/usr/share/udhcpc/default.script" "$ST/usr/lib/provisiond/agent"
  mkdir -p "$ST"/{proc,sys,dev,run,tmp,mnt,var/log,etc/dropbear,etc/provisiond,root/.ssh}
  chmod 1777 "$ST/tmp"
  chmod 0700 "$ST/root" "$ST/root/.ssh"
  printf 'kernel=%s\nsource_date_epoch=%s\n' "$KVER" "$EPOCH" > "$ST/etc/provisiond/initrd-release"
}

# --- archive -----------------------------------------------------------------

# One newc (SVR4 "070701") header + padded name; the kernel's initramfs format
# (Documentation/driver-api/early-userspace/buffer-format.rst).
newc_entry() { # name mode rdevmajor rdevminor
  local name=$1 namesize=$((${#1} + 1)) pad
  printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
    0 "$2" 0 0 1 "$EPOCH" 0 0 0 "$3" "$4" "$namesize" 0
  printf '%s\0' "$name"
  pad=$(( (4 - (110 + namesize) % 4) % 4 ))
  head -c "$pad" /dev/zero
}

# Device nodes need root to mknod; write them as archive entries instead.
device_archive() {
  newc_entry dev/console $((8#020600)) 5 1
  newc_entry TRAILER!!! 0 0 0
}

write_archive() {
  local tmp=$OUT/.initrd.img.$$
  find "$ST" -exec touch -h -d "@$EPOCH" {} +
  {
    (cd "$ST" && find . -mindepth 1 | sort |
      cpio -o -H newc --reproducible -R 0:0 --quiet)
    device_archive
  } | gzip -n -9 > "$tmp"
  mv -f "$tmp" "$OUT/initrd.img"
  cp "$BOOTDIR/vmlinuz-$KVER" "$OUT/.vmlinuz.$$" && mv -f "$OUT/.vmlinuz.$$" "$OUT/vmlinuz"
  say "wrote $OUT/initrd.img ($(stat -c %s "$OUT/initrd.img") bytes," \
    "sha256 $(sha256sum "$OUT/initrd.img" | cut -c1-16))"
  say "wrote $OUT/vmlinuz ($KVER)"
}

main() {
  parse_args "$@"
  mkdir -p "$OUT"
  ST=$(mktemp -d "${TMPDIR:-/tmp}/provisiond-initrd.XXXXXX")
  trap 'rm -rf "$ST"' EXIT
  say "building for kernel $KVER into $OUT (SOURCE_DATE_EPOCH=$EPOCH)"
  install_rootfs
  install_busybox
  for b in $EXTRA_BINS; do install_binary "$b"; done
  for f in $EXTRA_FILES; do install -D -m 0644 "$f" "$ST$f"; done
  install_modules
  write_archive
}

main "$@"
