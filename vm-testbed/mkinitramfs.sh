#!/bin/bash
# Throwaway busybox initramfs for test-bed runs before/without the real agent
# initrd (initrd/build.sh). It loads NIC/disk modules, gets an address with
# udhcpc, POSTs {provisiond.url}/agent/v1/register (like the agent does), then
# prints its marker (default IDLE-AGENT-UP) and does action= (poweroff|wait|shell).
# Kernel args: marker=WORD action=WORD provisiond.url=http://HOST:PORT
# Usage: mkinitramfs.sh OUT.cpio.gz        (needs busybox-static; K=<kernel version>)
set -euo pipefail
OUT=${1:?usage: mkinitramfs.sh OUT.cpio.gz}
K=${K:-$(ls /lib/modules | sort -V | tail -1)}
MODS=${MODS:-"e1000 virtio_net virtio_pci virtio_blk ata_piix sd_mod"}
ST=$(mktemp -d "${TMPDIR:-/tmp}/tb-initramfs.XXXXXX")
trap 'rm -rf "$ST"' EXIT

mkdir -p "$ST"/{bin,sbin,etc,proc,sys,dev,tmp,run,usr/bin,usr/sbin,lib/modules/$K}
cp /bin/busybox "$ST/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$ST/bin/$a"; done
mknod -m 600 "$ST/dev/console" c 5 1
mknod -m 666 "$ST/dev/null" c 1 3

# modules and their hard dependencies, in load order
: > "$ST/etc/modules.order"
for m in $MODS; do
  modprobe -S "$K" --show-depends --ignore-install "$m" | awk '$1=="insmod"{print $2}' |
  while read -r ko; do
    rel=${ko#/lib/modules/$K/}
    mkdir -p "$ST/lib/modules/$K/$(dirname "$rel")"
    cp -n "$ko" "$ST/lib/modules/$K/$rel"
    grep -qxF "$rel" "$ST/etc/modules.order" || echo "$rel" >> "$ST/etc/modules.order"
  done
done
cp /lib/modules/"$K"/modules.order /lib/modules/"$K"/modules.builtin* "$ST/lib/modules/$K/" 2>/dev/null || true
depmod -b "$ST" "$K"

cat > "$ST/etc/udhcpc.script" <<'EOF'
#!/bin/sh
case "$1" in
  deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    echo "DHCP-BOUND ip=$ip serverid=$serverid"
    echo "$ip" > /tmp/ip ;;
esac
exit 0
EOF
chmod +x "$ST/etc/udhcpc.script"

cat > "$ST/init" <<'EOF'
#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev 2>/dev/null
MARKER=IDLE-AGENT-UP; ACTION=shell; URL=
for w in $(cat /proc/cmdline); do
  case "$w" in
    marker=*) MARKER=${w#marker=} ;; action=*) ACTION=${w#action=} ;;
    provisiond.url=*) URL=${w#provisiond.url=} ;;
  esac
done
up() { cut -d' ' -f1 /proc/uptime; }
echo "INIT-START uptime=$(up)"
while read -r ko; do insmod "/lib/modules/$(uname -r)/$ko" 2>/dev/null; done < /etc/modules.order
ip link set lo up; ip link set eth0 up
udhcpc -i eth0 -s /etc/udhcpc.script -n -q -t 10 -T 2
MAC=$(cat /sys/class/net/eth0/address)
if [ -n "$URL" ]; then
  wget -q -O /tmp/register.out --header 'Content-Type: application/json' \
    --post-data "{\"mac\": \"$MAC\", \"ip\": \"$(cat /tmp/ip)\"}" "$URL/agent/v1/register" \
    && echo "REGISTERED uptime=$(up)" || echo "REGISTER-FAILED"
fi
echo "$MARKER mac=$MAC ip=$(cat /tmp/ip 2>/dev/null) uptime=$(up)"
case "$ACTION" in
  poweroff) poweroff -f ;;
  wait) while :; do sleep 3600; done ;;
  *) exec setsid cttyhack sh ;;
esac
EOF
chmod +x "$ST/init"

mkdir -p "$(dirname "$OUT")"
(cd "$ST" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) > "$OUT"
echo "built $OUT ($(stat -c %s "$OUT") bytes)"
