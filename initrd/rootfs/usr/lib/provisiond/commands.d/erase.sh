# commands.d/erase.sh — the "erase" command: wipe the machine's disks.
#
# Owns: cmd_erase ID ARG OUTFILE. ARG (base64) holds key=value lines from
# provisiond/release.py: mode (quick|full) and disks (comma-separated).
# quick: zeros over the first and the last MiB of each disk (MBR, GPT header
# and its backup, most file-system/RAID signatures). full: zeros over the
# whole disk, 256 MiB at a time with progress reports (busybox blkdiscard
# cannot ask for zeroing and a plain discard does not promise zeros, so it is
# not used). Each write is fsync'ed. The last output line is the outcome.

. "${AGENT_LIB:-/usr/lib/provisiond}/lib/stream.sh"

cmd_erase() {
	rm -rf "$STREAM_TMP" && mkdir -p "$STREAM_TMP"
	printf '%s' "$2" | base64 -d >"$STREAM_TMP/arg" 2>/dev/null
	_mode=$(sed -n 's/^mode=//p' "$STREAM_TMP/arg")
	_disks=$(sed -n 's/^disks=//p' "$STREAM_TMP/arg" | tr ',' ' ')
	erase_run "$1" "$_mode" $_disks >"$3" 2>&1
}

erase_run() { # CMD MODE DISK...
	_cmd=$1 _m=$2
	shift 2
	_all=
	for _e_d in "$@"; do _all="$_all $(dev_path "$_e_d")"; done
	# shellcheck disable=SC2086
	set -- $_all
	case "$_m" in quick | full) ;; *) echo "erase failed: mode must be quick or full" && return 2 ;; esac
	[ $# -gt 0 ] || { echo "erase failed: no disks given" && return 2; }
	_total=0
	for _e_d in "$@"; do
		_s=$(disk_size "$_e_d") || { echo "erase failed: $_e_d is not a disk here" && return 1; }
		_total=$((_total + _s))
	done
	_done=0
	for _e_d in "$@"; do
		_s=$(disk_size "$_e_d")
		if [ "$_m" = quick ]; then
			erase_quick "$_e_d" "$_s" || { echo "erase failed: writing to $_e_d failed" && return 1; }
			_done=$((_done + _s))
		else
			erase_full "$_cmd" "$_e_d" "$_s" || { echo "erase failed: writing to $_e_d failed" && return 1; }
		fi
		blockdev --rereadpt "$_e_d" 2>/dev/null
		echo "$_e_d: $_s bytes, $_m erase done"
	done
	progress_now "$_cmd" "$_total" "$_total"
	echo "erased ($_m): $*"
}

erase_quick() { # DISK SIZE
	_mib=1048576
	_n=$((($2 + _mib - 1) / _mib))
	[ "$_n" -gt 1 ] || _n=1
	dd if=/dev/zero of="$1" bs="$_mib" count=1 conv=notrunc,fsync 2>/dev/null || return 1
	_tail=$(($2 - _mib))
	[ "$_tail" -gt 0 ] || return 0
	dd if=/dev/zero of="$1" bs="$_mib" seek="$_tail" count="$_mib" oflag=seek_bytes \
		iflag=count_bytes conv=notrunc,fsync 2>/dev/null
}

erase_full() { # CMD DISK SIZE  (uses _done/_total of erase_run)
	_step=$((256 * 1048576)) _off=0
	while [ "$_off" -lt "$3" ]; do
		_len=$_step
		[ $((_off + _len)) -gt "$3" ] && _len=$(($3 - _off))
		dd if=/dev/zero of="$2" bs=1048576 seek="$_off" count="$_len" oflag=seek_bytes \
			iflag=count_bytes conv=notrunc,fsync 2>/dev/null || return 1
		_off=$((_off + _len)) _done=$((_done + _len))
		progress_now "$1" "$_done" "$_total"
	done
}
