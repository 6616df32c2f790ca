# commands.d/capture.sh — the "capture" command: upload a local disk as an image.
#
# Owns: cmd_capture ID ARG OUTFILE. ARG (base64) holds key=value lines from
# provisiond/capture.py: disk, size (what the server expects), retries,
# timeout. The disk is read in 4 MiB chunks (O_DIRECT when possible); zero
# chunks are skipped; every other chunk is compressed with zstd -1 when that
# saves 10 % and PUT to .../stream/ID/chunk/INDEX?sha256=..&enc=r|z (the
# server verifies and answers 422 on a mismatch; each chunk is retried up to
# `retries` times). The last output line is "captured: chunks=K list=SHA",
# SHA being the sha256 of the "INDEX SHA256" lines, which the server compares
# with its own scan of what it stored. A disk written to while it is captured
# gives an inconsistent image (chunks are read at different moments).

. "${AGENT_LIB:-/usr/lib/provisiond}/lib/stream.sh"

cmd_capture() {
	rm -rf "$STREAM_TMP" && mkdir -p "$STREAM_TMP"
	printf '%s' "$2" | base64 -d >"$STREAM_TMP/arg" 2>/dev/null
	DISK=$(dev_path "$(sed -n 's/^disk=//p' "$STREAM_TMP/arg")")
	SIZE=$(sed -n 's/^size=//p' "$STREAM_TMP/arg")
	STREAM_RETRIES=$(sed -n 's/^retries=//p' "$STREAM_TMP/arg")
	: "${STREAM_RETRIES:=5}"
	capture_run "$1" >"$3" 2>&1
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
