# usedblocks.sh — which chunks of a disk a capture has to read (the "plan").
#
# Owns: capture_plan DISK SIZE CHUNK OUTFILE -> OUTFILE gets the chunk indices
# to read (ascending, one a line); stdout gets one summary line per partition.
# The partition table is read with sfdisk -d. For each partition whose file
# system is recognised by its magic bytes (ext2/3/4, ntfs, vfat, xfs, btrfs)
# and whose partclone program is on PATH, `partclone.<fs> -D` writes a
# ddrescue domain map of the blocks in use; only chunks that hold a used block
# are planned (each used range is widened by 4 KiB on both sides: partclone's
# ext map reports some ranges up to 1 KiB late). Everything else — the
# partition table, gaps, raw or unknown partitions, a disk without a table, a
# partition whose device node is missing or has the wrong size, a partclone
# that fails — is planned whole (the capture still skips its zero chunks).
# A chunk not planned is zero in the image: only free file-system blocks are
# left out, so the deployed file systems are the same (fsck clean).

# part_dev DISK N -> device of partition N (vda1, nvme0n1p1, mmcblk0p1, loop0p1).
part_dev() {
	case "$1" in *[0-9]) echo "${1}p$2" ;; *) echo "$1$2" ;; esac
}

# hex_at DEV OFFSET LENGTH -> the bytes there as lower-case hex, no spaces.
hex_at() {
	od -A n -t x1 -j "$2" -N "$3" "$1" 2>/dev/null | tr -d ' \n'
}

# fs_tool DEV -> the partclone suffix for the file system on DEV (nothing if unknown).
fs_tool() {
	[ "$(hex_at "$1" 1080 2)" = 53ef ] && echo extfs && return
	[ "$(hex_at "$1" 3 8)" = 4e54465320202020 ] && echo ntfs && return
	[ "$(hex_at "$1" 0 4)" = 58465342 ] && echo xfs && return
	[ "$(hex_at "$1" 65600 8)" = 5f42485266535f4d ] && echo btrfs && return
	if [ "$(hex_at "$1" 510 2)" = 55aa ]; then
		case "$(hex_at "$1" 82 5)$(hex_at "$1" 54 4)" in
		4641543332* | *46415431) echo fat && return ;;
		esac
	fi
	return 0
}

# partitions DISK -> "N START_BYTE SIZE_BYTES" per partition of DISK's table.
partitions() {
	sfdisk -d "$1" 2>/dev/null | awk '
		/^sector-size:/ { ss = $2 }
		/: start=/ {
			name = $1; sub(/.*[^0-9]/, "", name)
			line = $0; sub(/.*start= */, "", line); split(line, a, ","); start = a[1]
			line = $0; sub(/.*size= */, "", line); split(line, b, ","); size = b[1]
			if (!ss) ss = 512
			if (name != "" && size > 0) printf "%s %.0f %.0f\n", name, start * ss, size * ss
		}'
}

# used_ranges DEV TOOL OFFSET LOG -> "U START END" byte ranges in use (disk offsets).
used_ranges() {
	_u_dom=$STREAM_TMP/domain
	rm -f "$_u_dom"
	"partclone.$2" -D -q -s "$1" -o "$_u_dom" -L "$4" --offset_domain="$3" >/dev/null 2>&1 ||
		return 1
	[ -s "$_u_dom" ] || return 1
	grep -E '^0x[0-9A-Fa-f]+ +0x[0-9A-Fa-f]+ +\+' "$_u_dom" | while read -r _u_a _u_n _u_s; do
		echo "U $((_u_a)) $((_u_a + _u_n))"
	done
}

# capture_plan DISK SIZE CHUNK OUTFILE
capture_plan() {
	_p_ranges=$STREAM_TMP/ranges
	: >"$_p_ranges"
	partitions "$1" >"$STREAM_TMP/parts"
	while read -r _p_n _p_start _p_size; do
		_p_dev=$(part_dev "$1" "$_p_n")
		_p_what="raw"
		if [ -e "$_p_dev" ] && [ "$(disk_size "$_p_dev")" = "$_p_size" ]; then
			_p_tool=$(fs_tool "$_p_dev")
			if [ -z "$_p_tool" ]; then
				_p_what="no known file system: read whole"
			elif ! command -v "partclone.$_p_tool" >/dev/null 2>&1; then
				_p_what="$_p_tool, but no partclone.$_p_tool here: read whole"
			elif used_ranges "$_p_dev" "$_p_tool" "$_p_start" "$STREAM_TMP/partclone.log" \
				>"$STREAM_TMP/used" && [ -s "$STREAM_TMP/used" ]; then
				echo "K $_p_start $((_p_start + _p_size))" >>"$_p_ranges"
				awk -v lo="$_p_start" -v hi="$((_p_start + _p_size))" '{
					a = $2 - 4096; b = $3 + 4096; if (a < lo) a = lo; if (b > hi) b = hi
					if (b > a) printf "U %.0f %.0f\n", a, b; u += b - a
				} END { printf "%.0f\n", u > "/dev/stderr" }' "$STREAM_TMP/used" \
					>>"$_p_ranges" 2>"$STREAM_TMP/used.bytes"
				_p_what="$_p_tool: $(($(cat "$STREAM_TMP/used.bytes") / 1048576)) MiB in use (partclone)"
			else
				_p_what="$_p_tool: partclone.$_p_tool failed ($(tail -n 1 "$STREAM_TMP/partclone.log" 2>/dev/null)): read whole"
			fi
		else
			_p_what="no device $_p_dev of $_p_size bytes: read whole"
		fi
		echo "partition $_p_n ($((_p_size / 1048576)) MiB at $_p_start): $_p_what"
	done <"$STREAM_TMP/parts"
	[ -s "$STREAM_TMP/parts" ] || echo "no partition table on $1: read whole"
	# known partitions keep only their used ranges; everything else is read whole
	awk -v size="$2" -v c="$3" '
		function emit(a, b,   i) { for (i = int(a / c); i * c < b; i++) printf "%d\n", i }
		$1 == "K" { ks[n + 0] = $2 + 0; ke[n + 0] = $3 + 0; n++ }
		$1 == "U" { emit($2, $3) }
		END {
			for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (ks[j] < ks[i]) {
				t = ks[i]; ks[i] = ks[j]; ks[j] = t; t = ke[i]; ke[i] = ke[j]; ke[j] = t }
			pos = 0
			for (i = 0; i < n; i++) { if (ks[i] > pos) emit(pos, ks[i]); if (ke[i] > pos) pos = ke[i] }
			if (pos < size) emit(pos, size)
		}' "$_p_ranges" | sort -n -u >"$4"
}
