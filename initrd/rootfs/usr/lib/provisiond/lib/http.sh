# http.sh — the agent's side of the agent HTTP API, over busybox wget.
#
# Owns: authenticated requests to the server and their HTTP status: the agent
# channel's control calls (/agent/v1/..., not streams) go to $AGENT_URL; chunk
# streams (/agent/v1/stream/...) and everything else the HTTP port serves
# (/install/v1/...) go to $DATA_URL. Each defaults to the other.
# Every request carries "Authorization: Bearer $AGENT_TOKEN" (RFC 6750
# section 2.1). The token is passed only to wget, never logged.
# busybox 1.35 wget crashes (SIGSEGV) on error paths when given -T, so
# request time is bounded with timeout(1) instead.
# After a call API_STATUS holds the HTTP status: 200 for any 2xx (wget does
# not tell 200 from 204; an empty body means "nothing"), the code of an error
# answer (401, 404, ...) or 000 when no HTTP answer came (refused, timeout).

: "${API_TIMEOUT:=20}"

# api_call TIMEOUT OUTFILE PATH [wget args...] -> 0 on 2xx.
api_call() {
	_h_t=$1 _h_o=$2 _h_path=$3
	shift 3
	_h_err=$(mktemp "$PROVISIOND_RUN/wget.XXXXXX")
	case "$_h_path" in
	/agent/v1/stream/*) _h_base=${DATA_URL:-$AGENT_URL} ;;
	/agent/v1/*) _h_base=$AGENT_URL ;;
	*) _h_base=${DATA_URL:-$AGENT_URL} ;;
	esac
	timeout "$_h_t" wget -q -O "$_h_o" -U provisiond-agent \
		--header "Authorization: Bearer $AGENT_TOKEN" "$@" "$_h_base$_h_path" 2>"$_h_err"
	_h_rc=$?
	if [ "$_h_rc" = 0 ]; then
		API_STATUS=200
	else
		API_STATUS=$(sed -n 's/.*server returned error: HTTP\/[0-9.]* \([0-9][0-9][0-9]\).*/\1/p' \
			"$_h_err" | head -n 1)
		: "${API_STATUS:=000}"
	fi
	rm -f "$_h_err"
	return "$_h_rc"
}

# api_get PATH OUTFILE [TIMEOUT]
api_get() {
	api_call "${3:-$API_TIMEOUT}" "$2" "$1"
}

# api_post PATH OUTFILE [BODYFILE [wget args...]] -> POST, empty body if no file.
api_post() {
	_h_p=$1 _h_out=$2 _h_body=${3:-}
	shift 2
	[ $# -gt 0 ] && shift
	if [ -n "$_h_body" ]; then
		api_call "$API_TIMEOUT" "$_h_out" "$_h_p" --post-file "$_h_body" "$@"
	else
		api_call "$API_TIMEOUT" "$_h_out" "$_h_p" --post-data "" "$@"
	fi
}
