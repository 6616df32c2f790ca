# commands.d/deploy.sh — the "deploy" command: write an image onto a local disk.
#
# Owns: cmd_deploy ID ARG OUTFILE. ARG (base64) holds key=value lines from
# provisiond/localdeploy.py: disk, transport (http|nc), size, sha256, port,
# workers, zeros (write|skip), retries, timeout, report_offset. Steps (http):
#   1. GET  .../stream/ID/manifest; refuse a disk smaller than the image;
#   2. zeros=write: make what the image leaves empty read as zeros (a file
#      target is truncated, a block device gets /dev/zero over the zero runs);
#   3. WORKERS streams GET .../stream/ID/chunks?start=W&step=WORKERS in
#      parallel; each chunk is verified (sha256 after zstd -d), written at its
#      offset (O_DIRECT, else fsync) and read back from the disk (O_DIRECT
#      when possible) and checked against the manifest at once, so the
#      verification overlaps the transfer of the next chunk; a cut or stalled
#      stream resumes from the next unverified chunk (bounded retries without
#      progress); a read-back mismatch fails the deploy;
#   4. report_offset= (an image with a report-in slot): the deploy's record
#      (GET .../stream/ID/report-in) is written over the slot;
#   5. the result is reported and the machine reboots into its disk
#      (AFTER_RESULT).
# nc: "nc SERVER PORT | dd of=DISK", then one sha256 of the image region.
# The last output line is the outcome shown to operators.

. "${AGENT_LIB:-/usr/lib/provisiond}/lib/stream.sh"

# arg_get KEY FILE -> value of the KEY=... line.
arg_get() { sed -n "s/^$1=//p" "$2" | head -n 1; }

cmd_deploy() {
	rm -rf "$STREAM_TMP" && mkdir -p "$STREAM_TMP"
	printf '%s' "$2" | base64 -d >"$STREAM_TMP/arg" 2>/dev/null
	DISK=$(dev_path "$(arg_get disk "$STREAM_TMP/arg")")
	SIZE=$(arg_get size "$STREAM_TMP/arg")
	STREAM_RETRIES=$(arg_get retries "$STREAM_TMP/arg")
	STREAM_TIMEOUT=$(arg_get timeout "$STREAM_TMP/arg")
	: "${STREAM_RETRIES:=5}" "${STREAM_TIMEOUT:=30}"
	deploy_run "$1" >"$3" 2>&1
	_d_rc=$?
	[ "$_d_rc" = 0 ] && AFTER_RESULT="power_now reboot"
	return "$_d_rc"
}

deploy_fail() {
	echo "deploy failed: $*"
	return 1
}

deploy_run() {
	[ -n "$DISK" ] && [ -n "$SIZE" ] || deploy_fail "arg lacks disk= or size=" || return
	_disk_size=$(disk_size "$DISK") || deploy_fail "$DISK is not a disk here" || return
	[ "$_disk_size" -ge "$SIZE" ] ||
		deploy_fail "short disk: $DISK has $_disk_size bytes, the image $SIZE" || return
	direct_flags "$DISK"
	echo "disk $DISK: $_disk_size bytes; image $SIZE bytes; ${IFLAG:-no O_DIRECT}"
	case "$(arg_get transport "$STREAM_TMP/arg")" in
	nc) deploy_nc "$1" ;;
	mcast) deploy_mcast "$1" ;; # fan-out: commands.d/fanout.sh
	*) deploy_http "$1" ;;
	esac || return
	_slot=$(arg_get report_offset "$STREAM_TMP/arg")
	[ -z "$_slot" ] || report_slot "$1" "$_slot"
}

# report_slot ID OFFSET -> this deploy's report-in record (4 KiB, one-time
# token) written over the image's slot at byte OFFSET, after the verification
# (provisiond/reportslot.py); the booted OS reads it and reports in.
report_slot() {
	api_get "/agent/v1/stream/$1/report-in" "$STREAM_TMP/slot" ||
		deploy_fail "report-in record not available (HTTP $API_STATUS)" || return
	[ "$(wc -c <"$STREAM_TMP/slot")" -eq 4096 ] ||
		deploy_fail "report-in record is not 4096 bytes" || return
	dd if="$STREAM_TMP/slot" of="$DISK" bs=4096 seek=$(($2 / 4096)) count=1 \
		conv=notrunc,fsync 2>/dev/null || deploy_fail "writing the report-in slot failed" || return
	rm -f "$STREAM_TMP/slot"
	echo "deployed and verified; report-in record written at byte $2 of $DISK"
}

deploy_http() {
	api_get "/agent/v1/stream/$1/manifest" "$STREAM_TMP/manifest" ||
		deploy_fail "manifest not available (HTTP $API_STATUS)" || return
	CHUNK=$(sed -n '1s/.*chunk_size=\([0-9]*\).*/\1/p' "$STREAM_TMP/manifest")
	_k=$(sed -n '1s/.* chunks=\([0-9]*\).*/\1/p' "$STREAM_TMP/manifest")
	_total=$(awk -v s="$SIZE" -v c="$CHUNK" 'NR > 1 { e = ($1 + 1) * c; if (e > s) e = s;
		t += e - $1 * c } END { printf "%.0f", t }' "$STREAM_TMP/manifest")
	[ -n "$CHUNK" ] && [ -n "$_k" ] || deploy_fail "manifest is malformed" || return
	if [ "$(arg_get zeros "$STREAM_TMP/arg")" != skip ]; then
		zero_fill || deploy_fail "zeroing the empty parts of $DISK failed" || return
	fi
	_n=$(arg_get workers "$STREAM_TMP/arg")
	[ "${_n:-1}" -ge 1 ] 2>/dev/null || _n=1
	[ "$_n" -gt "$_k" ] && _n=$_k
	[ "$_n" -ge 1 ] || _n=1
	_t0=$(cut -d' ' -f1 /proc/uptime)
	D_CMD=$1 D_LANES=$_n D_K=$_k
	run_lanes "$1" "$_total" "$_n" deploy_lane || deploy_fail "$LANES_ERR" || return
	sync "$DISK" 2>/dev/null || sync
	_t1=$(cut -d' ' -f1 /proc/uptime)
	echo "wrote $_k chunks ($_total bytes) in $(awk -v a="$_t0" -v b="$_t1" 'BEGIN { printf "%.1f", b - a }') s"
	echo "deployed: $_k chunks written, each read back and sha256 verified against the manifest"
}

deploy_lane() { stream_worker "$D_CMD" "$1" "$D_LANES" "$D_K"; }

# zero_fill -> the parts of the image not in the manifest read as zeros.
zero_fill() {
	if [ -f "$DISK" ]; then
		_z=$(file_size "$DISK")
		truncate -s 0 "$DISK" && truncate -s "$_z" "$DISK"
		return
	fi
	awk -v s="$SIZE" -v c="$CHUNK" 'NR > 1 { if ($1 > n) print n, $1; n = $1 + 1 }
		END { m = int((s + c - 1) / c); if (m > n) print n, m }' "$STREAM_TMP/manifest" |
		while read -r _a _b; do
			_end=$((_b * CHUNK))
			[ "$_end" -gt "$SIZE" ] && _end=$SIZE
			# shellcheck disable=SC2086
			dd if=/dev/zero of="$DISK" bs="$CHUNK" seek="$_a" count=$((_end - _a * CHUNK)) \
				iflag=count_bytes $OFLAG 2>/dev/null || return 1
		done
}

deploy_nc() {
	set -- "$1" $(server_hostport)
	_port=$(arg_get port "$STREAM_TMP/arg")
	_want=$(arg_get sha256 "$STREAM_TMP/arg")
	[ -n "$_port" ] && [ -n "$_want" ] || deploy_fail "arg lacks port= or sha256=" || return
	nc "$2" "$_port" </dev/null | dd of="$DISK" bs=1M conv=notrunc,fsync 2>/dev/null
	CHUNK=1048576
	# shellcheck disable=SC2086
	_got=$(dd if="$DISK" bs=1M count="$SIZE" iflag=count_bytes $IFLAG 2>/dev/null | sha_stdin)
	[ "$_got" = "$_want" ] ||
		deploy_fail "sha256 of $DISK after the raw copy is $_got, the image's $_want" || return
	progress_now "$1" "$SIZE" "$SIZE"
	echo "deployed: raw copy of $SIZE bytes, sha256 verified"
}
