# stream.sh — the agent's side of image streams (deploy, capture, erase).
#
# Owns: disk probing (size, O_DIRECT), sha256 of files and pipes, the framed
# chunk reader (provisiond/chunks.py format: "C <index> <enc> <length>
# <sha256>" + bytes, "E <count>" at the end), the per-stream watchdog (a
# stream that brings no verified chunk for STREAM_TIMEOUT seconds is cut and
# resumed), progress reports (POST .../progress "DONE TOTAL" every 2 s) and a
# raw-body HTTP PUT over nc (busybox wget posts files as C strings).
# Every chunk is written at its own offset: bs = chunk size, seek = index.

: "${STREAM_TMP:=$PROVISIOND_RUN/stream}"
: "${STREAM_TIMEOUT:=30}"
: "${STREAM_RETRIES:=5}"
# DEVROOT (tests only, default empty) prefixes /dev/... disk names, as SYSROOT
# does for /proc and /sys: a test's "disk" is a regular file.
: "${DEVROOT:=}"

dev_path() { echo "$DEVROOT$1"; }

# sha_file FILE / sha_stdin -> lower-case hex sha256 (openssl if present: faster).
sha_file() {
	if command -v openssl >/dev/null 2>&1; then
		openssl dgst -sha256 -r "$1" | cut -d' ' -f1
	else
		sha256sum "$1" | cut -d' ' -f1
	fi
}

sha_stdin() {
	if command -v openssl >/dev/null 2>&1; then
		openssl dgst -sha256 -r | cut -d' ' -f1
	else
		sha256sum | cut -d' ' -f1
	fi
}

file_size() { stat -L -c %s "$1" 2>/dev/null; }

# disk_size DISK -> bytes of a block device or a regular file ("disk" in tests).
disk_size() {
	if [ -b "$1" ]; then
		blockdev --getsize64 "$1" 2>/dev/null
	elif [ -f "$1" ]; then
		file_size "$1"
	else
		return 1
	fi
}

# direct_flags DISK -> sets IFLAG/OFLAG to O_DIRECT when DISK supports it, else
# conv=fsync for writes (the page cache is then flushed per chunk).
direct_flags() {
	if dd if="$1" of=/dev/null bs=4096 count=1 iflag=direct 2>/dev/null; then
		IFLAG=iflag=direct OFLAG="oflag=direct conv=notrunc,fsync"
	else
		IFLAG= OFLAG="conv=notrunc,fsync"
	fi
}

server_hostport() { # -> "HOST PORT" of $DATA_URL (the HTTP port)
	_u=${DATA_URL:-$AGENT_URL}
	_u=${_u#http://}
	_u=${_u%%/*}
	case "$_u" in *:*) echo "${_u%:*} ${_u##*:}" ;; *) echo "$_u 80" ;; esac
}

stream_url() { echo "${DATA_URL:-$AGENT_URL}/agent/v1/stream/$1"; }

# progress_now CMD DONE TOTAL -> one report (errors ignored: progress is advisory).
progress_now() {
	printf '%s %s\n' "$2" "$3" >"$STREAM_TMP/progress.body"
	api_post "/agent/v1/stream/$1/progress" /dev/null "$STREAM_TMP/progress.body" \
		>/dev/null 2>&1
	return 0
}

# progress_loop CMD TOTAL -> background: sums $STREAM_TMP/done.* every 2 s.
progress_loop() {
	while :; do
		sleep 2
		_p_sum=0
		for _p_f in "$STREAM_TMP"/done.*; do
			[ -f "$_p_f" ] && _p_sum=$((_p_sum + $(cat "$_p_f" 2>/dev/null || echo 0)))
		done
		progress_now "$1" "$_p_sum" "$2"
	done
}

# run_lanes CMD TOTAL N FN -> runs "FN W" for W = 0..N-1 in parallel (the chunk
# lanes of a deploy or a capture; a lane writes its bytes done to
# $STREAM_TMP/done.W and its reason to $STREAM_TMP/wW.err when it fails),
# reporting the sum against TOTAL every 2 s. 0 when every lane succeeded, else
# 1 with the first lane's reason in LANES_ERR.
run_lanes() {
	rm -f "$STREAM_TMP"/w*.err "$STREAM_TMP"/done.*
	progress_loop "$1" "$2" &
	_rl_prog=$! _rl_w=0 _rl_pids=
	while [ "$_rl_w" -lt "$3" ]; do
		"$4" "$_rl_w" &
		_rl_pids="$_rl_pids $!" _rl_w=$((_rl_w + 1))
	done
	_rl_bad=0
	for _rl_pid in $_rl_pids; do
		wait "$_rl_pid" || _rl_bad=1
	done
	kill "$_rl_prog" 2>/dev/null
	if [ "$_rl_bad" = 1 ] || ls "$STREAM_TMP"/w*.err >/dev/null 2>&1; then
		LANES_ERR=$(cat "$STREAM_TMP"/w*.err 2>/dev/null | head -n 1)
		return 1
	fi
	progress_now "$1" "$2" "$2"
}

# watchdog PID FILE SECONDS -> kill PID when FILE has not changed for SECONDS.
watchdog() {
	_w_last= _w_idle=0
	while kill -0 "$1" 2>/dev/null; do
		sleep 1
		_w_cur=$(cat "$2" 2>/dev/null)
		if [ "$_w_cur" = "$_w_last" ]; then
			_w_idle=$((_w_idle + 1))
			[ "$_w_idle" -ge "$3" ] && kill "$1" 2>/dev/null && return 0
		else
			_w_idle=0 _w_last=$_w_cur
		fi
	done
}

# manifest_sha INDEX -> the sha256 the manifest lists for chunk INDEX.
manifest_sha() { awk -v i="$1" 'NR > 1 && $1 == i { print $2; exit }' "$STREAM_TMP/manifest"; }

# read_frames W -> reads frames from stdin; every good chunk is written to
# $DISK and advances S_POS by S_STEP. Returns 0 at the end frame, 2 when the
# stream broke off, 3 on a protocol error, 4 on a checksum mismatch.
read_frames() {
	_f_in=$STREAM_TMP/w$1.in
	while read -r _f_t _f_idx _f_enc _f_len _f_sha; do
		case "$_f_t" in
		E) return 0 ;;
		C) ;;
		*) S_ERR="bad frame header from the server" && return 3 ;;
		esac
		dd bs="$_f_len" count=1 iflag=fullblock of="$_f_in" 2>/dev/null
		[ "$(file_size "$_f_in")" = "$_f_len" ] || { S_ERR="connection lost in chunk $_f_idx" && return 2; }
		_f_raw=$_f_in
		if [ "$_f_enc" = z ]; then
			zstd -qdf "$_f_in" -o "$_f_in.raw" 2>/dev/null || { S_ERR="chunk $_f_idx: bad zstd data" && return 4; }
			_f_raw=$_f_in.raw
		fi
		_f_want=$(manifest_sha "$_f_idx")
		_f_got=$(sha_file "$_f_raw")
		if [ -z "$_f_want" ] || [ "$_f_got" != "$_f_want" ]; then
			S_ERR="checksum mismatch in chunk $_f_idx (sha256 $_f_got, manifest ${_f_want:-none})"
			return 4
		fi
		# shellcheck disable=SC2086
		dd if="$_f_raw" of="$DISK" bs="$CHUNK" seek="$_f_idx" count=1 $OFLAG 2>/dev/null ||
			{ S_ERR="write of chunk $_f_idx to $DISK failed" && return 5; }
		# read back what is now on the disk (O_DIRECT where the disk allows it) while
		# the next chunk is still on the wire: verification overlaps the transfer
		verify_chunk "$_f_idx" "$_f_want" || { S_ERR=$V_ERR && return 5; }
		S_DONE=$((S_DONE + $(file_size "$_f_raw")))
		echo "$S_DONE" >"$STREAM_TMP/done.$1"
		S_POS=$((S_POS + S_STEP))
	done
	S_ERR="stream ended early (connection lost)"
	return 2
}

# stream_worker CMD W N K -> fetch positions W, W+N, ... < K; resume after a
# cut from the next unverified chunk; at most STREAM_RETRIES failures in a row
# without progress. Writes the reason to $STREAM_TMP/w$W.err on failure.
stream_worker() {
	S_POS=$2 S_STEP=$3 S_DONE=0 _s_fails=0 _s_last=-1
	echo 0 >"$STREAM_TMP/done.$2"
	while [ "$S_POS" -lt "$4" ]; do
		_s_fifo=$STREAM_TMP/w$2.fifo
		rm -f "$_s_fifo" && mkfifo "$_s_fifo"
		wget -q -O "$_s_fifo" -U provisiond-agent --header "Authorization: Bearer $AGENT_TOKEN" \
			"$(stream_url "$1")/chunks?start=$S_POS&step=$3" 2>"$STREAM_TMP/w$2.wget" &
		_s_wget=$!
		watchdog "$_s_wget" "$STREAM_TMP/done.$2" "$STREAM_TIMEOUT" &
		_s_dog=$!
		read_frames "$2" <"$_s_fifo"
		_s_rc=$?
		kill "$_s_wget" "$_s_dog" 2>/dev/null
		wait "$_s_wget" 2>/dev/null
		[ "$_s_rc" = 0 ] && [ "$S_POS" -ge "$4" ] && return 0
		[ "$_s_rc" = 0 ] && S_ERR="stream ended before position $S_POS of $4"
		if grep -q 'HTTP/[0-9.]* 4[0-9][0-9]' "$STREAM_TMP/w$2.wget" 2>/dev/null; then
			echo "server refused the stream: $(tr -d '\n' <"$STREAM_TMP/w$2.wget")" >"$STREAM_TMP/w$2.err"
			return 1
		fi
		if [ "$S_POS" != "$_s_last" ]; then _s_fails=0; fi
		_s_last=$S_POS _s_fails=$((_s_fails + 1))
		if [ "$_s_fails" -gt "$STREAM_RETRIES" ] || [ "$_s_rc" = 5 ]; then
			echo "$S_ERR (after $((_s_fails - 1)) retries)" >"$STREAM_TMP/w$2.err"
			return 1
		fi
		log "stream $2: $S_ERR; resuming at position $S_POS (retry $_s_fails)"
		sleep 1
	done
	return 0
}

# verify_chunk INDEX SHA -> 0 when the disk holds chunk INDEX with that sha256
# (read back with $IFLAG: O_DIRECT where supported); sets V_ERR otherwise.
verify_chunk() {
	_v_len=$(chunk_len "$1")
	if [ "$_v_len" = "$CHUNK" ]; then # a whole chunk: no head -c copy in the pipe
		# shellcheck disable=SC2086
		_v_got=$(dd if="$DISK" bs="$CHUNK" skip="$1" count=1 $IFLAG 2>/dev/null | sha_stdin)
	else
		# shellcheck disable=SC2086
		_v_got=$(dd if="$DISK" bs="$CHUNK" skip="$1" count=1 $IFLAG 2>/dev/null |
			head -c "$_v_len" | sha_stdin)
	fi
	[ "$_v_got" = "$2" ] && return 0
	V_ERR="read-back of chunk $1 differs from the manifest (disk has sha256 $_v_got)"
	return 1
}

chunk_len() { # INDEX -> bytes of that chunk in an image of $SIZE bytes
	_c_end=$((($1 + 1) * CHUNK))
	[ "$_c_end" -gt "$SIZE" ] && _c_end=$SIZE
	echo $((_c_end - $1 * CHUNK))
}

# http_put PATH FILE [TIMEOUT] -> raw binary body over nc; sets API_STATUS.
http_put() {
	set -- "$1" "$2" "${3:-$API_TIMEOUT}" $(server_hostport)
	{
		printf 'PUT %s HTTP/1.0\r\nHost: %s\r\nAuthorization: Bearer %s\r\n' "$1" "$4" "$AGENT_TOKEN"
		printf 'Content-Type: application/octet-stream\r\nContent-Length: %s\r\n\r\n' "$(file_size "$2")"
		cat "$2"
	} | timeout "$3" nc "$4" "$5" >"$STREAM_TMP/put.out" 2>/dev/null
	API_STATUS=$(head -n 1 "$STREAM_TMP/put.out" | cut -d' ' -f2)
	: "${API_STATUS:=000}"
	case "$API_STATUS" in 2??) return 0 ;; *) return 1 ;; esac
}
