# commands.d/fanout.sh — the receiver side of fan-out: "deploy" with transport=mcast.
#
# Owns deploy_mcast CMD (called by cmd_deploy of deploy.sh) and its helpers.
# The server (provisiond/fanout.py) multicasts the image's non-zero chunks,
# raw, in manifest order, with udp-sender; ARG adds port= (udpcast portbase),
# rdv= (rendezvous group), start_timeout= and receive_timeout=. Steps:
#   1. GET .../stream/ID/manifest (the authenticated HTTP channel);
#   2. zeros=write: the parts the image leaves empty read as zeros;
#   3. udp-receiver on the interface that routes to the server, its stdout
#      cut into chunks by the manifest: every chunk is written at its offset,
#      read back and its sha256 checked against the manifest (WORKERS chunks
#      at once, while the next is read); a chunk that fails is only noted
#      (mc.bad), the stream goes on;
#   4. every chunk not verified (bad, lost, or never sent because this
#      machine was dropped or the sender died) is fetched over HTTP with the
#      unicast stream worker (repair_plan: single chunks, and one stream for
#      the tail from the first position after which nothing arrived).
# Progress: done.* files, reported by progress_loop as for unicast.

# mcast_iface -> the interface the route to the server leaves by.
mcast_iface() {
	set -- $(server_hostport)
	ip route get "$1" 2>/dev/null | sed -n 's/.* dev \([^ ]*\).*/\1/p' | head -n 1
}

# repair_plan K < positions verified (one a line, any order) -> lines "one P"
# for single missing positions and "tail P" when every position from P to
# K-1 is missing (at least two of them: one stream instead of K-P requests).
repair_plan() {
	sort -n | uniq | awk -v k="$1" '
		{ ok[$1] = 1 }
		END {
			t = k
			while (t > 0 && !((t - 1) in ok)) t--
			if (k - t < 2) t = k
			for (p = 0; p < t; p++) if (!(p in ok)) print "one", p
			if (t < k) print "tail", t
		}'
}

# mcast_chunk SLOT POS INDEX SHA -> write the chunk in mc.in.SLOT, read it back
# from the disk and check it against the manifest (in the background: WORKERS
# chunks at once, as unicast's workers); POS goes to mc.ok or mc.bad,
# done.mcSLOT sums the slot's bytes. One sha256 per chunk, of what the disk
# holds (O_DIRECT read-back where supported): it proves both that the bytes
# that came were the manifest's and that they were written; a chunk that came
# corrupt is on the disk until its repair over HTTP overwrites it (a deploy
# whose repair fails fails).
mcast_chunk() {
	_c_f=$STREAM_TMP/mc.in.$1
	# shellcheck disable=SC2086
	if dd if="$_c_f" of="$DISK" bs="$CHUNK" seek="$3" count=1 $OFLAG 2>/dev/null &&
		verify_chunk "$3" "$4"; then
		echo "$2" >>"$STREAM_TMP/mc.ok"
		echo $(($(cat "$STREAM_TMP/done.mc$1" 2>/dev/null || echo 0) + $(file_size "$_c_f"))) \
			>"$STREAM_TMP/mcsum.$1" && mv "$STREAM_TMP/mcsum.$1" "$STREAM_TMP/done.mc$1"
	else
		echo "$2" >>"$STREAM_TMP/mc.bad"
	fi
}

# mcast_read WORKERS -> stdin is udp-receiver's output, cut by the manifest;
# each chunk is handed to mcast_chunk while the next one is read.
mcast_read() {
	_m_pos=0 _m_n=${1:-1}
	: >"$STREAM_TMP/mc.ok"
	: >"$STREAM_TMP/mc.bad"
	sed 1d "$STREAM_TMP/manifest" >"$STREAM_TMP/mc.list"
	while read -r _m_idx _m_sha _m_enc <&3; do
		_m_slot=$((_m_pos % _m_n))
		eval "_m_pid=\${_m_pid$_m_slot:-}"
		[ -n "$_m_pid" ] && wait "$_m_pid"
		_m_len=$(chunk_len "$_m_idx")
		dd bs="$_m_len" count=1 iflag=fullblock of="$STREAM_TMP/mc.in.$_m_slot" 2>/dev/null
		[ "$(file_size "$STREAM_TMP/mc.in.$_m_slot")" = "$_m_len" ] || break
		mcast_chunk "$_m_slot" "$_m_pos" "$_m_idx" "$_m_sha" &
		eval "_m_pid$_m_slot=$!"
		_m_pos=$((_m_pos + 1))
	done 3<"$STREAM_TMP/mc.list"
	wait
	rm -f "$STREAM_TMP"/mc.in.*
}

deploy_mcast() {
	api_get "/agent/v1/stream/$1/manifest" "$STREAM_TMP/manifest" ||
		deploy_fail "manifest not available (HTTP $API_STATUS)" || return
	CHUNK=$(sed -n '1s/.*chunk_size=\([0-9]*\).*/\1/p' "$STREAM_TMP/manifest")
	_k=$(sed -n '1s/.* chunks=\([0-9]*\).*/\1/p' "$STREAM_TMP/manifest")
	[ -n "$CHUNK" ] && [ -n "$_k" ] || deploy_fail "manifest is malformed" || return
	_total=$(awk -v s="$SIZE" -v c="$CHUNK" 'NR > 1 { e = ($1 + 1) * c; if (e > s) e = s;
		t += e - $1 * c } END { printf "%.0f", t }' "$STREAM_TMP/manifest")
	if [ "$(arg_get zeros "$STREAM_TMP/arg")" != skip ]; then
		zero_fill || deploy_fail "zeroing the empty parts of $DISK failed" || return
	fi
	_port=$(arg_get port "$STREAM_TMP/arg")
	_rdv=$(arg_get rdv "$STREAM_TMP/arg")
	_if=$(mcast_iface)
	_n=$(arg_get workers "$STREAM_TMP/arg")
	[ "${_n:-1}" -ge 1 ] 2>/dev/null || _n=1
	[ -n "$_port" ] && [ -n "$_rdv" ] || deploy_fail "arg lacks port= or rdv=" || return
	progress_loop "$1" "$_total" &
	_prog=$!
	_t0=$(cut -d' ' -f1 /proc/uptime)
	if [ -n "$_if" ] && command -v udp-receiver >/dev/null 2>&1; then
		udp-receiver --interface "$_if" --portbase "$_port" --mcast-rdv-address "$_rdv" \
			--nokbd --start-timeout "$(arg_get start_timeout "$STREAM_TMP/arg")" \
			--receive-timeout "$(arg_get receive_timeout "$STREAM_TMP/arg")" \
			2>"$STREAM_TMP/udp.log" | mcast_read "$_n"
	else
		echo "no multicast: ${_if:-no interface routes to the server}; udp-receiver" \
			"$(command -v udp-receiver || echo missing)"
		: >"$STREAM_TMP/mc.ok"
		: >"$STREAM_TMP/mc.bad"
	fi
	_t1=$(cut -d' ' -f1 /proc/uptime)
	_ok=$(wc -l <"$STREAM_TMP/mc.ok")
	_bad=$(wc -l <"$STREAM_TMP/mc.bad")
	echo "multicast: $_ok of $_k chunks verified, $_bad failed their sha256, $((_k - _ok - _bad))" \
		"not received, in $(awk -v a="$_t0" -v b="$_t1" 'BEGIN { printf "%.1f", b - a }') s" \
		"($(tr '\r' '\n' <"$STREAM_TMP/udp.log" 2>/dev/null | grep -v '^bytes=' | grep . |
			tail -n 1))"
	repair_plan "$_k" <"$STREAM_TMP/mc.ok" >"$STREAM_TMP/mc.plan"
	_rep=0
	while read -r _r_kind _r_pos; do
		if [ "$_r_kind" = tail ]; then
			stream_worker "$1" "$_r_pos" 1 "$_k" || break
			_rep=$((_rep + _k - _r_pos))
		else
			stream_worker "$1" "$_r_pos" "$_k" "$_k" || break
			_rep=$((_rep + 1))
		fi
	done <"$STREAM_TMP/mc.plan"
	kill "$_prog" 2>/dev/null
	if ls "$STREAM_TMP"/w*.err >/dev/null 2>&1; then
		deploy_fail "repair over HTTP: $(cat "$STREAM_TMP"/w*.err 2>/dev/null | head -n 1)"
		return 1
	fi
	progress_now "$1" "$_total" "$_total"
	sync "$DISK" 2>/dev/null || sync
	_t2=$(cut -d' ' -f1 /proc/uptime)
	echo "wrote $_k chunks ($_total bytes) in $(awk -v a="$_t0" -v b="$_t2" 'BEGIN { printf "%.1f", b - a }') s"
	echo "deployed: $_k chunks verified against the manifest ($_ok over multicast, $_rep repaired over HTTP)"
}
