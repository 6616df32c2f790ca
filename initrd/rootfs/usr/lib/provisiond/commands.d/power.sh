# commands.d/power.sh — the "reboot" and "poweroff" commands.
#
# Owns: cmd_reboot / cmd_poweroff ID ARG OUTFILE and power_now. The commands
# only set AFTER_RESULT: the dispatcher reports the result first, then runs it
# (sync + forced reboot/poweroff: nothing in a RAM disk needs a clean stop).
# PROVISIOND_FAKE_POWER=FILE makes power_now append the action to FILE
# instead (unit tests run the agent on a developer's machine).

cmd_reboot() {
	echo "rebooting" >"$3"
	AFTER_RESULT="power_now reboot"
	return 0
}

cmd_poweroff() {
	echo "powering off" >"$3"
	AFTER_RESULT="power_now poweroff"
	return 0
}

power_now() {
	sync
	if [ -n "${PROVISIOND_FAKE_POWER:-}" ]; then
		echo "$1" >>"$PROVISIOND_FAKE_POWER"
		return 0
	fi
	console "PROVISIOND-AGENT-$(echo "$1" | tr a-z A-Z)"
	"$1" -f
}
