# json.sh — JSON value encoders for the agent (POSIX sh, busybox ash).
#
# Owns: turning shell strings into JSON (RFC 8259) literals. Strings from
# firmware and sysfs are reduced to printable ASCII: tabs become spaces, any
# other control or non-ASCII byte becomes "?" (a DMI string in Latin-1 must
# not make the whole document invalid UTF-8, RFC 8259 section 8.1); leading
# and trailing blanks are trimmed (SCSI models are space padded).

# json_str VALUE -> "escaped" (RFC 8259 section 7: \ and " escaped).
json_str() {
	printf '"%s"' "$(printf '%s' "$1" | tr '\t' ' ' | tr -c ' -~' '?' |
		sed -e 's/^ *//' -e 's/ *$//' -e 's/\\/\\\\/g' -e 's/"/\\"/g')"
}

# json_int VALUE -> the integer, or null unless VALUE is a non-negative
# decimal integer (sysfs speed is -1 when the link is down).
json_int() {
	case "$1" in
	'' | *[!0-9]*) printf 'null' ;;
	*) printf '%s' "$1" | sed 's/^0*\([0-9]\)/\1/' ;;
	esac
}

# json_bool VALUE -> true for 1/true/yes, else false.
json_bool() {
	case "$1" in
	1 | true | yes) printf 'true' ;;
	*) printf 'false' ;;
	esac
}
