# commands.d/run.sh — the "run" command: execute a shell command.
#
# Owns: cmd_run ID ARG OUTFILE. ARG is the base64 of the command; it runs with
# sh -c in /, stdin from /dev/null, stdout+stderr combined into OUTFILE, cut
# at $RUN_MAX_OUTPUT bytes (the rest is counted and dropped, the command is
# not killed). Returns the command's exit status.

: "${RUN_MAX_OUTPUT:=1048576}"

cmd_run() {
	_script=$(printf '%s' "$2" | base64 -d 2>/dev/null)
	if [ -z "$_script" ]; then
		echo "provisiond-agent: run: arg is missing or not base64" >"$3"
		return 2
	fi
	(
		cd / || exit 1
		{
			sh -c "$_script" </dev/null 2>&1
			echo $? >"$3.status"
		} | {
			head -c "$RUN_MAX_OUTPUT"
			_dropped=$(wc -c)
			[ "$_dropped" -gt 0 ] &&
				printf '\n[provisiond-agent: %s more bytes of output dropped]\n' "$_dropped"
		} >"$3"
	)
	_status=$(cat "$3.status" 2>/dev/null)
	rm -f "$3.status"
	return "${_status:-1}"
}
