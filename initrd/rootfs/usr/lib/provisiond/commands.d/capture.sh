# commands.d/capture.sh — the "capture" command: upload a local disk as an image.
#
# Owns: cmd_capture ID ARG OUTFILE. ARG (base64) holds key=value lines from
# provisiond/capture.py: disk, size (what the server expects), retries,
# timeout, transport (tcp|http), port and workers (tcp).
#
# transport=tcp (provisiond/capturerx.py): capture_plan (lib/usedblocks.sh)
# lists the chunks to read — only chunks with used blocks of the file systems
# partclone knows, everything else whole. WORKERS workers each take every
# WORKERS-th planned chunk and send it over ONE connection (socat, else nc):
# a hello "P <token> <worker> <workers>", then per chunk "C <index> <enc>
# <length> <sha256>" + the bytes (zstd -1 when that saves 10 %), then
# "E <count>"; the server answers "OK <count>" or "ERR <reason>". A chunk
# whose sha256 is that of a zero chunk is not sent. Per chunk a worker forks
# one dd (the read), and per batch of 4 chunks one openssl, one cat (the
# batch's frames, in the background while the next batch is read and hashed)
# and (unless the data proved incompressible) one zstd — no HTTP request, no
# per-chunk fsync on the server. The lanes run through run_lanes
# (lib/stream.sh), as deploy's do.
# A worker whose connection fails resends its share (bounded retries).
#
# transport=http: every chunk of the disk is read in turn (O_DIRECT when
# possible), zero chunks skipped, the others PUT to
# .../stream/ID/chunk/INDEX?sha256=..&enc=r|z (422 on a mismatch; each chunk
# is retried up to `retries` times).
#
# Both: progress (bytes read of the planned bytes) is reported every 2 s and
# moves per chunk; the last output line is "captured: chunks=K list=SHA", SHA
# being the sha256 of the "INDEX SHA256" lines, which the server compares
# with what it stored. A disk written to while it is captured gives an
# inconsistent image (chunks are read at different moments).

. "${AGENT_LIB:-/usr/lib/provisiond}/lib/stream.sh"
. "${AGENT_LIB:-/usr/lib/provisiond}/lib/usedblocks.sh"

cmd_capture() {
	rm -rf "$STREAM_TMP" && mkdir -p "$STREAM_TMP"
	printf '%s' "$2" | base64 -d >"$STREAM_TMP/arg" 2>/dev/null
	DISK=$(dev_path "$(sed -n 's/^disk=//p' "$STREAM_TMP/arg")")
	SIZE=$(sed -n 's/^size=//p' "$STREAM_TMP/arg")
	STREAM_RETRIES=$(sed -n 's/^retries=//p' "$STREAM_TMP/arg")
	: "${STREAM_RETRIES:=5}"
	case "$(sed -n 's/^transport=//p' "$STREAM_TMP/arg")" in
	tcp) capture_tcp "$1" >"$3" 2>&1 ;;
	*) capture_run "$1" >"$3" 2>&1 ;;
	esac
}

capture_fail() {
	echo "capture failed: $*"
	return 1
}

capture_run() {
	CHUNK=4194304
	_size=$(disk_size "$DISK") || capture_fail "$DISK is not a disk here" || return
	[ "$_size" = "$SIZE" ] || capture_fail "$DISK has $_size bytes, the server expects $SIZE" || return
	direct_flags "$DISK"
	_count=$(((SIZE + CHUNK - 1) / CHUNK))
	_raw=$STREAM_TMP/c.raw _z=$STREAM_TMP/c.zst
	: >"$STREAM_TMP/list"
	_i=0 _done=0 _k=0
	while [ "$_i" -lt "$_count" ]; do
		_len=$(chunk_len "$_i")
		# shellcheck disable=SC2086
		dd if="$DISK" bs="$CHUNK" skip="$_i" count=1 $IFLAG 2>/dev/null | head -c "$_len" >"$_raw"
		[ "$(file_size "$_raw")" = "$_len" ] || capture_fail "read of chunk $_i failed" || return
		if [ "$(tr -d '\000' <"$_raw" | head -c 1 | wc -c)" != 0 ]; then
			_sha=$(sha_file "$_raw")
			capture_put "$1" "$_i" "$_sha" || return
			echo "$_i $_sha" >>"$STREAM_TMP/list"
			_k=$((_k + 1))
		fi
		_done=$((_done + _len)) _i=$((_i + 1))
		[ $((_i % 16)) = 0 ] && progress_now "$1" "$_done" "$SIZE"
	done
	progress_now "$1" "$SIZE" "$SIZE"
	echo "captured: chunks=$_k list=$(sha_file "$STREAM_TMP/list")"
}

capture_put() { # CMD INDEX SHA
	_body=$_raw _enc=r
	if command -v zstd >/dev/null 2>&1 && zstd -q -1 -f "$_raw" -o "$_z" 2>/dev/null &&
		[ "$(file_size "$_z")" -le $(($(file_size "$_raw") * 9 / 10)) ]; then
		_body=$_z _enc=z
	fi
	_n=0
	while ! http_put "/agent/v1/stream/$1/chunk/$2?sha256=$3&enc=$_enc" "$_body" 120; do
		_n=$((_n + 1))
		case "$API_STATUS" in 404 | 410) capture_fail "server refused chunk $2 (HTTP $API_STATUS)" && return 1 ;; esac
		[ "$_n" -gt "$STREAM_RETRIES" ] &&
			capture_fail "chunk $2 not accepted after $STREAM_RETRIES retries (HTTP $API_STATUS)" &&
			return 1
		log "capture: chunk $2 answered HTTP $API_STATUS; retry $_n"
		sleep 1
	done
}

# --- transport=tcp ------------------------------------------------------------

capture_tcp() {
	CHUNK=4194304
	_port=$(sed -n 's/^port=//p' "$STREAM_TMP/arg")
	_n=$(sed -n 's/^workers=//p' "$STREAM_TMP/arg")
	[ "${_n:-1}" -ge 1 ] 2>/dev/null || _n=1
	[ -n "$_port" ] || capture_fail "arg lacks port=" || return
	_size=$(disk_size "$DISK") || capture_fail "$DISK is not a disk here" || return
	[ "$_size" = "$SIZE" ] || capture_fail "$DISK has $_size bytes, the server expects $SIZE" || return
	direct_flags "$DISK"
	_t0=$(cut -d' ' -f1 /proc/uptime)
	capture_plan "$DISK" "$SIZE" "$CHUNK" "$STREAM_TMP/plan"
	_tp=$(cut -d' ' -f1 /proc/uptime)
	_planned=$(wc -l <"$STREAM_TMP/plan")
	_last=$(((SIZE - 1) / CHUNK))
	# bytes to read: every planned chunk is whole but the last chunk of the disk
	_pbytes=$((_planned * CHUNK))
	grep -qx "$_last" "$STREAM_TMP/plan" && _pbytes=$((_pbytes - (_last + 1) * CHUNK + SIZE))
	echo "plan: $_planned of $((_last + 1)) chunks ($((_pbytes / 1048576)) MiB) to read, $_n streams" \
		"(planned in $(awk -v a="$_t0" -v b="$_tp" 'BEGIN { printf "%.1f", b - a }') s)"
	ZERO_SHA=$(dd if=/dev/zero bs="$CHUNK" count=1 2>/dev/null | sha_stdin)
	ZERO_TAIL_SHA=$(dd if=/dev/zero bs=$((SIZE - _last * CHUNK)) count=1 2>/dev/null | sha_stdin)
	C_LANES=$_n C_PORT=$_port
	run_lanes "$1" "$_pbytes" "$_n" capture_lane || capture_fail "$LANES_ERR" || return
	sort -n "$STREAM_TMP"/list.* >"$STREAM_TMP/list"
	_k=$(wc -l <"$STREAM_TMP/list")
	_t1=$(cut -d' ' -f1 /proc/uptime)
	echo "read $_planned chunks, sent $_k in $(awk -v a="$_t0" -v b="$_t1" 'BEGIN { printf "%.1f", b - a }') s"
	echo "captured: chunks=$_k list=$(sha_file "$STREAM_TMP/list")"
}

capture_lane() { # W -> lane W of C_LANES: every C_LANES-th planned chunk
	awk -v n="$C_LANES" -v w="$1" '(NR - 1) % n == w' "$STREAM_TMP/plan" >"$STREAM_TMP/plan.$1"
	capture_worker "$1" "$C_LANES" "$C_PORT"
}

# capture_worker W N PORT -> sends share W over one connection; retries a failed one.
capture_worker() {
	set -- "$1" "$2" "$3" $(server_hostport)
	_cw_try=0
	while :; do
		: >"$STREAM_TMP/list.$1"
		echo 0 >"$STREAM_TMP/done.$1"
		capture_frames "$1" "$2" <"$STREAM_TMP/plan.$1" | capture_send "$4" "$3" >"$STREAM_TMP/ans.$1" 2>&1
		[ -f "$STREAM_TMP/w$1.err" ] && return 1 # a local read error: no retry
		read -r _cw_ans _cw_rest <"$STREAM_TMP/ans.$1"
		[ "$_cw_ans" = OK ] && [ "$_cw_rest" = "$(wc -l <"$STREAM_TMP/list.$1")" ] && return 0
		_cw_try=$((_cw_try + 1))
		if [ "$_cw_try" -gt "$STREAM_RETRIES" ]; then
			echo "stream $1: $(head -c 200 "$STREAM_TMP/ans.$1" | tr -d '\n')" \
				"(server $4:$3, after $STREAM_RETRIES retries)" >"$STREAM_TMP/w$1.err"
			return 1
		fi
		log "capture: stream $1 answered '$(head -c 200 "$STREAM_TMP/ans.$1")'; retry $_cw_try"
		sleep 1
	done
}

# capture_send HOST PORT -> stdin to HOST:PORT, then the server's answer on stdout.
# socat with 256 KiB buffers where the initrd has it: busybox nc moves a pipe in
# small reads and costs ~5x the CPU per byte (bench/capture), the agent's
# largest cost. -t: after stdin ends, wait for the answer (the server may
# still be checking and writing the last chunks).
capture_send() {
	if command -v socat >/dev/null 2>&1; then
		socat -b 262144 -t 600 - "TCP:$1:$2"
	else
		nc "$1" "$2"
	fi
}

# capture_frames W N -> stdout: the hello, the frames of the chunks listed on stdin, the end.
# Chunks go in batches of BATCH: one openssl (and one zstd, one stat) per batch,
# not per chunk — process start-up is most of what a 4 MiB sha256 costs. After
# a batch none of whose chunks compressed by 10 %, the next ZSKIP batches are
# sent raw without trying (random or already compressed data). A batch's frame
# headers are written by the shell (no fork) and the whole batch leaves in ONE
# background cat, while the next batch is read and hashed into the other of two
# file sets (double buffering: reading overlaps sending).
BATCH=4 ZSKIP=2
capture_frames() {
	printf 'P %s %s %s\n' "$AGENT_TOKEN" "$1" "$2"
	_cf_done=0 _cf_n=0 _cf_skip=0 _cf_set=0 _cf_cat=
	while :; do
		_cf_r=$STREAM_TMP/r$1.$_cf_set
		_cf_b=0 _cf_idx= _cf_files=
		while [ "$_cf_b" -lt "$BATCH" ] && read -r _cf_i; do
			# shellcheck disable=SC2086
			if ! dd if="$DISK" of="$_cf_r.$_cf_b" bs="$CHUNK" skip="$_cf_i" count=1 $IFLAG 2>/dev/null; then
				echo "read of chunk $_cf_i of $DISK failed" >"$STREAM_TMP/w$1.err"
				return 1
			fi
			_cf_idx="$_cf_idx $_cf_i" _cf_files="$_cf_files $_cf_r.$_cf_b" _cf_b=$((_cf_b + 1))
		done
		[ "$_cf_b" = 0 ] && break
		# shellcheck disable=SC2086
		openssl dgst -sha256 -r $_cf_files >"$_cf_r.sha" 2>/dev/null || sha256sum $_cf_files >"$_cf_r.sha"
		_cf_tryz=0
		: >"$_cf_r.zs"
		if [ "$_cf_skip" -gt 0 ]; then
			_cf_skip=$((_cf_skip - 1))
		else
			# shellcheck disable=SC2086
			zstd -q -1 -f $_cf_files </dev/null 2>/dev/null && _cf_tryz=1
			# shellcheck disable=SC2046,SC2086
			[ "$_cf_tryz" = 1 ] && stat -c %s $(printf '%s.zst ' $_cf_files) >"$_cf_r.zs" 2>/dev/null
			_cf_skip=$ZSKIP
		fi
		exec 3<"$_cf_r.sha" 4<"$_cf_r.zs"
		_cf_b=0 _cf_out= _cf_lines=
		for _cf_i in $_cf_idx; do
			read -r _cf_sha _cf_x <&3
			_cf_zlen=
			[ "$_cf_tryz" = 1 ] && read -r _cf_zlen <&4
			_cf_f=$_cf_r.$_cf_b _cf_b=$((_cf_b + 1))
			_cf_len=$CHUNK _cf_zero=$ZERO_SHA
			[ "$_cf_i" = "$_last" ] && _cf_len=$((SIZE - _last * CHUNK)) _cf_zero=$ZERO_TAIL_SHA
			[ "$_cf_sha" = "$_cf_zero" ] && continue
			if [ -n "$_cf_zlen" ] && [ "$_cf_zlen" -le $((_cf_len * 9 / 10)) ]; then
				printf 'C %s z %s %s\n' "$_cf_i" "$_cf_zlen" "$_cf_sha" >"$_cf_f.h"
				_cf_out="$_cf_out $_cf_f.h $_cf_f.zst"
				_cf_skip=0 # this data compresses: keep trying
			else
				printf 'C %s r %s %s\n' "$_cf_i" "$_cf_len" "$_cf_sha" >"$_cf_f.h"
				_cf_out="$_cf_out $_cf_f.h $_cf_f"
			fi
			_cf_lines="$_cf_lines$_cf_i $_cf_sha
"
			_cf_n=$((_cf_n + 1))
		done
		exec 3<&- 4<&-
		# the previous batch must be on its way before this one is (frame order)
		if [ -n "$_cf_cat" ]; then
			wait "$_cf_cat" || return 1
		fi
		_cf_cat=
		if [ -n "$_cf_out" ]; then
			# shellcheck disable=SC2086
			cat $_cf_out &
			_cf_cat=$!
			printf '%s' "$_cf_lines" >>"$STREAM_TMP/list.$1"
		fi
		for _cf_i in $_cf_idx; do # progress: every chunk of the batch is read and hashed
			[ "$_cf_i" = "$_last" ] && _cf_done=$((_cf_done + SIZE - _last * CHUNK)) && continue
			_cf_done=$((_cf_done + CHUNK))
		done
		echo "$_cf_done" >"$STREAM_TMP/done.$1"
		_cf_set=$((1 - _cf_set))
	done
	if [ -n "$_cf_cat" ]; then
		wait "$_cf_cat" || return 1
	fi
	printf 'E %s\n' "$_cf_n"
}
