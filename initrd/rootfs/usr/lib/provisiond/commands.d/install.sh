# commands.d/install.sh — the "install" command: an FAI-style install onto a local disk.
#
# Owns: cmd_install ID ARG OUTFILE. ARG (base64) holds key=value lines from
# provisiond/templatedeploy.py: disk, firmware (bios|uefi), template. The
# rendered template set comes as one tar (GET /install/v1/bundle/ID):
#   partitions.sfdisk  the sfdisk script (BIOS/MBR or UEFI/GPT with an ESP)
#   filesystems        "PART TYPE MOUNTPOINT ID LABEL" lines, made and mounted in order
#   rootfs             "url U", "sha256 H", "size N": the root file-system archive
#   bootloader         extlinux | systemd-boot
#   target/...         files copied over the unpacked root (hostname, fstab, keys, ...)
#   post/NN-*.sh       post-install steps, run in order with TARGET set
# Steps (each prints "step N/7 ..." with its time, the last line is the outcome):
#   1 partition  2 mkfs  3 unpack (sha256 checked, progress reported)
#   4 configure  5 boot loader  6 post-install steps  7 unmount; then the
#   result is reported and the machine reboots into its disk (AFTER_RESULT).
# Any failing step stops the install with "install failed: <step>: <why>".

. "${AGENT_LIB:-/usr/lib/provisiond}/lib/stream.sh"

: "${INSTALL_TMP:=$PROVISIOND_RUN/install}"
: "${INSTALL_TARGET:=/mnt/target}"
# e2fsprogs' mke2fs by path: busybox ash runs its own (ext2-only) applet for a bare name
: "${MKE2FS:=/usr/sbin/mke2fs}"

cmd_install() {
	rm -rf "$INSTALL_TMP" "$STREAM_TMP" && mkdir -p "$INSTALL_TMP/bundle" "$STREAM_TMP"
	printf '%s' "$2" | base64 -d >"$INSTALL_TMP/arg" 2>/dev/null
	DISK=$(dev_path "$(arg_get disk "$INSTALL_TMP/arg")")
	TARGET=$INSTALL_TARGET
	install_run "$1" >"$3" 2>&1
	_i_rc=$?
	install_unmount >>"$3" 2>&1
	[ "$_i_rc" = 0 ] && AFTER_RESULT="power_now reboot"
	return "$_i_rc"
}

install_fail() {
	echo "install failed: $*"
	return 1
}

# part_dev DISK N -> the device of partition N (sda1, vda1, nvme0n1p1, mmcblk0p1).
part_dev() {
	case "$1" in
	*[0-9]) echo "${1}p$2" ;;
	*) echo "$1$2" ;;
	esac
}

# is_mounted DIR -> something is mounted on DIR (busybox has no mountpoint applet).
is_mounted() { cut -d' ' -f2 /proc/mounts | grep -qxF "$1"; }

uptime_s() { cut -d' ' -f1 /proc/uptime; }

step() {
	_s_now=$(uptime_s)
	[ -n "${_s_t0:-}" ] && echo "  ($(awk -v a="$_s_t0" -v b="$_s_now" 'BEGIN { printf "%.1f", b - a }') s)"
	_s_t0=$_s_now
	echo "step $*"
	console "PROVISIOND-INSTALL step $*"
}

install_run() {
	[ -n "$DISK" ] || install_fail "arg lacks disk=" || return
	[ -b "$DISK" ] || install_fail "$DISK is not a block device here" || return
	api_get "/install/v1/bundle/$1" "$INSTALL_TMP/bundle.tar" ||
		install_fail "bundle: the rendered template is not available (HTTP $API_STATUS)" || return
	tar -x -f "$INSTALL_TMP/bundle.tar" -C "$INSTALL_TMP/bundle" ||
		install_fail "bundle: not a tar archive" || return
	B=$INSTALL_TMP/bundle
	for _f in partitions.sfdisk filesystems rootfs bootloader; do
		[ -s "$B/$_f" ] || install_fail "bundle: $_f missing or empty" || return
	done
	echo "install onto $DISK ($(disk_size "$DISK") bytes), template $(arg_get template "$INSTALL_TMP/arg")"
	step "1/7 partition $DISK" && install_partition || return
	step "2/7 make file systems" && install_mkfs || return
	step "3/7 unpack the root file system" && install_rootfs "$1" || return
	step "4/7 write the configuration" && install_configure || return
	step "5/7 boot loader $(cat "$B/bootloader")" && install_bootloader || return
	step "6/7 post-install steps" && install_post || return
	step "7/7 unmount" && install_unmount || return
	step "done"
	echo "installed: $(arg_get template "$INSTALL_TMP/arg") on $DISK; rebooting into it"
}

install_partition() {
	sfdisk --wipe always --wipe-partitions always "$DISK" <"$B/partitions.sfdisk" ||
		install_fail "partition: sfdisk refused the layout" || return
	blockdev --rereadpt "$DISK" 2>/dev/null
	sfdisk --dump "$DISK" | sed -n '/^\//p'
}

# wait_dev DEV -> the partition's device node exists (devtmpfs makes it soon).
wait_dev() {
	_w_n=0
	while [ ! -b "$1" ] && [ "$_w_n" -lt 50 ]; do
		sleep 0.2
		_w_n=$((_w_n + 1))
	done
	[ -b "$1" ]
}

install_mkfs() {
	while read -r _n _type _mnt _id _label; do
		case "$_n" in '' | '#'*) continue ;; esac
		_dev=$(part_dev "$DISK" "$_n")
		wait_dev "$_dev" || install_fail "mkfs: $_dev did not appear" || return
		case "$_type" in
		ext4) "$MKE2FS" -q -F -t ext4 -U "$_id" -L "$_label" "$_dev" ;;
		vfat) mkfs.fat -F 32 -i "$_id" -n "$_label" "$_dev" >/dev/null ;;
		swap) mkswap -U "$_id" -L "$_label" "$_dev" >/dev/null ;;
		*) install_fail "mkfs: file-system type $_type is not supported" || return ;;
		esac || install_fail "mkfs: $_type on $_dev failed" || return
		echo "$_dev: $_type $_label ($_id) for $_mnt"
		[ "$_type" = swap ] && continue
		_opts=defaults
		# while installing only: no barriers, lazy commits (fsync'ed before the reboot)
		[ "$_type" = ext4 ] && _opts=noatime,data=writeback,barrier=0,commit=60
		mkdir -p "$TARGET$_mnt" && mount -t "$_type" -o "$_opts" "$_dev" "$TARGET$_mnt" ||
			install_fail "mkfs: mounting $_dev on $TARGET$_mnt failed" || return
	done <"$B/filesystems"
	is_mounted "$TARGET" || install_fail "mkfs: nothing is mounted on / of the target" || return
}

install_rootfs() {
	_url=$(sed -n 's/^url //p' "$B/rootfs")
	_want=$(sed -n 's/^sha256 //p' "$B/rootfs")
	_size=$(sed -n 's/^size //p' "$B/rootfs")
	[ -n "$_url" ] && [ -n "$_want" ] && [ -n "$_size" ] ||
		install_fail "unpack: the rootfs file lacks url, sha256 or size" || return
	_arch=$TARGET/.provisiond-rootfs.tar.zst
	wget -q -O "$_arch" "$_url" &
	_get=$!
	while kill -0 "$_get" 2>/dev/null; do
		progress_now "$1" "$(file_size "$_arch" 2>/dev/null || echo 0)" "$_size"
		sleep 2
	done
	wait "$_get" || install_fail "unpack: download of $_url failed" || return
	_got=$(file_size "$_arch")
	progress_now "$1" "$_got" "$_size"
	[ "$_got" = "$_size" ] || install_fail "unpack: got $_got bytes, expected $_size" || return
	_sum=$(sha_file "$_arch")
	[ "$_sum" = "$_want" ] ||
		install_fail "unpack: sha256 of the archive is $_sum, expected $_want" || return
	echo "archive: $_size bytes, sha256 verified"
	zstd -dc "$_arch" | tar -x -C "$TARGET" || install_fail "unpack: tar failed" || return
	rm -f "$_arch"
	echo "unpacked: $(du -sm "$TARGET" | cut -f1) MiB"
}

install_configure() {
	[ -d "$B/target" ] || return 0
	cp -a "$B/target/." "$TARGET/" || install_fail "configure: copying files failed" || return
	(cd "$B/target" && find . -type f | sed 's|^\.||')
}

bind_mounts() {
	for _m in dev proc sys; do
		is_mounted "$TARGET/$_m" || mount --bind "/$_m" "$TARGET/$_m" || return 1
	done
}

install_bootloader() {
	bind_mounts || install_fail "boot loader: bind mounts failed" || return
	case "$(cat "$B/bootloader")" in
	extlinux)
		chroot "$TARGET" extlinux --install /boot/extlinux ||
			install_fail "boot loader: extlinux --install failed" || return
		dd if="$TARGET/usr/lib/syslinux/mbr/mbr.bin" of="$DISK" bs=440 count=1 conv=notrunc \
			2>/dev/null || install_fail "boot loader: writing the MBR failed" || return
		;;
	systemd-boot)
		_esp=$TARGET/boot/efi
		is_mounted "$_esp" || install_fail "boot loader: no ESP mounted on /boot/efi" || return
		mkdir -p "$_esp/EFI/BOOT" "$_esp/provisiond" &&
			cp "$TARGET/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$_esp/EFI/BOOT/BOOTX64.EFI" &&
			cp -L "$TARGET/vmlinuz" "$_esp/provisiond/vmlinuz" &&
			cp -L "$TARGET/initrd.img" "$_esp/provisiond/initrd.img" ||
			install_fail "boot loader: copying systemd-boot, kernel or initrd to the ESP failed" ||
			return
		;;
	*) install_fail "boot loader: $(cat "$B/bootloader") is not supported" || return ;;
	esac
	echo "boot loader $(cat "$B/bootloader") installed"
}

install_post() {
	[ -d "$B/post" ] || { echo "no post-install steps" && return 0; }
	for _p in "$B"/post/*; do
		[ -f "$_p" ] || continue
		TARGET=$TARGET sh -e "$_p" >"$INSTALL_TMP/post.out" 2>&1
		_rc=$?
		sed 's/^/    /' "$INSTALL_TMP/post.out" | tail -n 20
		echo "post ${_p##*/}: exit $_rc"
		[ "$_rc" = 0 ] || install_fail "post-install step ${_p##*/} exited $_rc" || return
	done
}

install_unmount() {
	sync
	# deepest mount points first
	grep " $TARGET" /proc/mounts | cut -d' ' -f2 | sort -r | while read -r _m; do
		umount "$_m" 2>/dev/null || umount -l "$_m"
	done
	! grep -q " $TARGET" /proc/mounts || install_fail "unmount: $TARGET is still mounted"
}
