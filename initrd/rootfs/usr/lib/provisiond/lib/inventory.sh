# inventory.sh — hardware inventory of an idle resource as one JSON object.
#
# Owns: reading /proc and /sys (prefixed by $SYSROOT for tests) into
#   {"cpu": {"model", "count"}, "memory_bytes", "disks": [...], "nics": [...],
#    "dmi": {"vendor", "product", "serial", "uuid"}, "firmware", "kernel"}
# Needs common.sh (sys_read) and json.sh.

# Block devices that are never install targets.
INVENTORY_SKIP_DISKS=${INVENTORY_SKIP_DISKS:-"loop* ram* zram* sr* fd* dm-* md*"}

inventory_cpu() {
	_ci=$SYSROOT/proc/cpuinfo
	_model=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' "$_ci" 2>/dev/null | head -n 1)
	_count=$(grep -c '^processor[[:space:]]*:' "$_ci" 2>/dev/null)
	: "${_count:=0}"
	printf '{"model": %s, "count": %s}' "$(json_str "$_model")" "$(json_int "$_count")"
}

inventory_memory() {
	_kb=$(sed -n 's/^MemTotal:[[:space:]]*\([0-9]*\) kB$/\1/p' "$SYSROOT/proc/meminfo" 2>/dev/null)
	json_int "$(( ${_kb:-0} * 1024 ))"
}

skip_disk() {
	for _p in $INVENTORY_SKIP_DISKS; do
		# shellcheck disable=SC2254
		case "$1" in $_p) return 0 ;; esac
	done
	return 1
}

inventory_disk() { # /sys/block/NAME
	_n=${1##*/}
	_sectors=$(sys_read "$1/size")
	_serial=$(sys_read "$1/device/serial")
	[ -n "$_serial" ] || _serial=$(sys_read "$1/serial")
	printf '{"name": %s, "size_bytes": %s, "model": %s, "serial": %s, "rotational": %s}' \
		"$(json_str "$_n")" "$(json_int "$(( ${_sectors:-0} * 512 ))")" \
		"$(json_str "$(sys_read "$1/device/model")")" "$(json_str "$_serial")" \
		"$(json_bool "$(sys_read "$1/queue/rotational")")"
}

inventory_disks() {
	_sep=
	printf '['
	for _d in "$SYSROOT"/sys/block/*; do
		[ -e "$_d" ] || continue
		skip_disk "${_d##*/}" && continue
		printf '%s%s' "$_sep" "$(inventory_disk "$_d")"
		_sep=', '
	done
	printf ']'
}

inventory_nic() { # /sys/class/net/NAME
	_drv=$(readlink "$1/device/driver" 2>/dev/null)
	printf '{"name": %s, "mac": %s, "driver": %s, "link": %s, "speed_mbps": %s}' \
		"$(json_str "${1##*/}")" "$(json_str "$(sys_read "$1/address")")" \
		"$(json_str "${_drv##*/}")" "$(json_bool "$(sys_read "$1/carrier")")" \
		"$(json_int "$(sys_read "$1/speed")")"
}

# Only NICs backed by a device: no lo, bridges, tunnels.
inventory_nics() {
	_sep=
	printf '['
	for _d in "$SYSROOT"/sys/class/net/*; do
		[ -e "$_d/device" ] || continue
		printf '%s%s' "$_sep" "$(inventory_nic "$_d")"
		_sep=', '
	done
	printf ']'
}

inventory_dmi() {
	_id=$SYSROOT/sys/class/dmi/id
	printf '{"vendor": %s, "product": %s, "serial": %s, "uuid": %s}' \
		"$(json_str "$(sys_read "$_id/sys_vendor")")" \
		"$(json_str "$(sys_read "$_id/product_name")")" \
		"$(json_str "$(sys_read "$_id/product_serial")")" \
		"$(json_str "$(sys_read "$_id/product_uuid")")"
}

inventory_firmware() {
	if [ -d "$SYSROOT/sys/firmware/efi" ]; then printf 'uefi'; else printf 'bios'; fi
}

inventory_kernel() {
	_r=$(sys_read "$SYSROOT/proc/sys/kernel/osrelease")
	[ -n "$_r" ] || _r=$(uname -r)
	printf '%s' "$_r"
}

# inventory_json -> the whole inventory on one line.
inventory_json() {
	printf '{"cpu": %s, "memory_bytes": %s, "disks": %s, "nics": %s, "dmi": %s, ' \
		"$(inventory_cpu)" "$(inventory_memory)" "$(inventory_disks)" \
		"$(inventory_nics)" "$(inventory_dmi)"
	printf '"firmware": %s, "kernel": %s}\n' \
		"$(json_str "$(inventory_firmware)")" "$(json_str "$(inventory_kernel)")"
}
