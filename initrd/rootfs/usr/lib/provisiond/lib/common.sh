# common.sh — shared helpers of /init and the agent (POSIX sh, busybox ash).
#
# Owns: reading the kernel command line, the boot MAC (BOOTIF), console
# markers and agent log lines. SYSROOT (default empty) prefixes every /proc
# and /sys path so unit tests can run these functions against a fake tree.

: "${SYSROOT:=}"
: "${PROVISIOND_RUN:=/run/provisiond}"
: "${PROVISIOND_LOG:=$PROVISIOND_RUN/agent.log}"
: "${PROVISIOND_CONSOLE:=/dev/console}"

# cmdline_get KEY -> value of the last KEY=value word of /proc/cmdline.
# Returns 1 when KEY is absent. Quoted values with spaces are not supported.
cmdline_get() {
	awk -v k="$1=" '{
		for (i = 1; i <= NF; i++) if (index($i, k) == 1) { v = substr($i, length(k) + 1); f = 1 }
	} END { if (!f) exit 1; print v }' "$SYSROOT/proc/cmdline" 2>/dev/null
}

# normalize_mac STR -> lower-case colon form, or nothing if STR is no MAC.
# Accepts pxelinux/iPXE BOOTIF ("01-52-54-00-12-34-56": ARP type 1 first),
# dashes or colons, any case.
normalize_mac() {
	_m=$(printf '%s' "$1" | tr 'A-F-' 'a-f:')
	case "$_m" in
	01:??:??:??:??:??:??) _m=${_m#01:} ;;
	esac
	case "$_m" in
	[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f])
		printf '%s\n' "$_m" ;;
	*) return 1 ;;
	esac
}

# boot_mac -> the MAC named by BOOTIF on the kernel command line.
boot_mac() {
	_b=$(cmdline_get BOOTIF) || return 1
	normalize_mac "$_b"
}

# sys_read FILE -> first line of FILE, nothing if unreadable (EINVAL on a
# down NIC's carrier, root-only DMI files, ...).
sys_read() {
	[ -r "$1" ] || return 0
	head -n 1 "$1" 2>/dev/null
}

# console MARKER... -> one line on the console; tests wait for these.
console() {
	printf '%s\n' "$*" >>"$PROVISIOND_CONSOLE" 2>/dev/null || printf '%s\n' "$*" >&2
}

# log MSG... -> agent log line on stderr (the console under busybox init) and
# in $PROVISIOND_LOG. Never pass the token here.
log() {
	printf 'provisiond-agent: %s\n' "$*" >&2
	printf '%s %s\n' "$(cut -d' ' -f1 /proc/uptime 2>/dev/null)" "$*" \
		>>"$PROVISIOND_LOG" 2>/dev/null
	return 0
}

# random_below N -> pseudo-random integer in [0, N).
random_below() {
	_r=$(od -An -N2 -tu2 /dev/urandom 2>/dev/null | tr -d ' ')
	echo $(( ${_r:-0} % $1 ))
}

# sleep_jitter SECONDS MAX_JITTER_MS -> sleep SECONDS plus 0..MAX ms.
sleep_jitter() {
	_ms=$(( $1 * 1000 + $(random_below $(( $2 + 1 ))) ))
	sleep "$(( _ms / 1000 )).$(printf '%03d' $(( _ms % 1000 )))"
}
