"""proxyDHCP next to dnsmasq: addresses from dnsmasq, the boot file from provisiond.

dnsmasq (DHCP only, ``--port=0``, no boot options) runs in its own namespace on
the lab bridge; provisiond runs in the server namespace with a proxy-mode
subnet. A scapy-crafted PXE DISCOVER from a client namespace must draw both
offers; then a REQUEST to port 4011 must draw provisiond's ACK from port 4011.
Real clients against the same set-up: tests/testbed/test_proxy_vm.py (iPXE
ROM, OVMF's PXE); the answers diffed against dnsmasq's proxy mode:
tests/interop/test_dhcp_proxy_diff.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from tests.dhcplab import Server, write_config
from tests.netlab import Lab, sh

pytestmark = pytest.mark.interop
MAC = "52:54:00:bb:00:01"

CLIENT = r"""
import json, socket, sys, time
from scapy.all import AsyncSniffer, BOOTP, DHCP, IP, UDP, Ether, conf, sendp
conf.verb = 0
mac, server = sys.argv[1], sys.argv[2]
ch = bytes.fromhex(mac.replace(":", ""))
pxe = [("vendor_class_id", b"PXEClient:Arch:00000:UNDI:002001"),
       ("pxe_client_architecture", b"\x00\x00"), ("pxe_client_network_interface", b"\x01\x02\x01"),
       ("pxe_client_machine_identifier", b"\x00" + bytes(range(16)))]
disc = (Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67) / BOOTP(chaddr=ch, xid=0x5EED, flags=0x8000)
        / DHCP(options=[("message-type", "discover"), *pxe, "end"]))
sniff = AsyncSniffer(iface="eth0",
                     lfilter=lambda p: BOOTP in p and p[BOOTP].op == 2 and p[BOOTP].xid == 0x5EED)
sniff.start(); time.sleep(0.5); sendp(disc, iface="eth0"); time.sleep(2.5); sniff.stop()
def opts(p):
    return {k: v for k, v in (o for o in p[DHCP].options if isinstance(o, tuple) and len(o) == 2)}
offers = []
for p in sniff.results:
    o = opts(p)
    offers.append({"yiaddr": p[BOOTP].yiaddr, "server_id": o.get("server_id"),
                   "file": p[BOOTP].file.rstrip(b"\0").decode(),
                   "vendor": (o.get("vendor_class_id") or b"").decode(),
                   "siaddr": p[BOOTP].siaddr})
print(json.dumps(offers), flush=True)
mine = [o for o in offers if o["yiaddr"] != "0.0.0.0"]
if not mine:
    sys.exit(0)
# take dnsmasq's address, then ask provisiond's proxy port (PXE spec 2.1 section 2.2.4)
import subprocess
subprocess.run(["ip", "addr", "add", mine[0]["yiaddr"] + "/24", "dev", "eth0"], check=True)
req = bytes(BOOTP(chaddr=ch, xid=0x5EEE, ciaddr=mine[0]["yiaddr"])
            / DHCP(options=[("message-type", "request"), *pxe, "end"]))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((mine[0]["yiaddr"], 68)); s.settimeout(3)
s.sendto(req, (server, 4011))
data, src = s.recvfrom(2048)
ack = BOOTP(data)
print(json.dumps({"src": list(src), "yiaddr": ack.yiaddr,
                  "file": ack.file.rstrip(b"\0").decode(),
                  "type": opts(ack).get("message-type")}), flush=True)
"""


@pytest.mark.skipif(
    not shutil.which("dnsmasq"), reason="needs dnsmasq (apt-get install dnsmasq-base)"
)
def test_proxy_dhcp_beside_dnsmasq(tmp_path):
    with Lab("dhcpp") as lab:
        dns_host = lab.add_client()  # the site's DHCP server
        sh("ip", "-n", dns_host.name, "addr", "add", f"{lab.net}.2/24", "dev", "eth0")
        client = lab.add_client(MAC)
        dnsmasq = dns_host.popen(
            ["dnsmasq", "--no-daemon", "--port=0", "--conf-file=/dev/null", "--interface=eth0",
             "--bind-interfaces", "--leasefile-ro", "--no-ping", "--log-dhcp",
             f"--dhcp-range={lab.net}.50,{lab.net}.90,255.255.255.0,1h",
             f"--pid-file={tmp_path}/dnsmasq.pid"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "dnsmasq.log", "w"),  # noqa: SIM115
        )  # fmt: skip
        server = Server(lab, write_config(tmp_path, lab, mode="proxy"))
        time.sleep(0.3)
        r = client.run([sys.executable, "-c", CLIENT, MAC, lab.server_ip], check=False, timeout=30)
        dnsmasq.terminate()
        stats = server.stop()
        lines = r.stdout.splitlines()
        assert lines, f"client printed nothing: {r.stderr[-2000:]}"
        offers = json.loads(lines[0])
        by_server = {o["server_id"]: o for o in offers}
        assert set(by_server) == {f"{lab.net}.2", lab.server_ip}, offers
        theirs, ours = by_server[f"{lab.net}.2"], by_server[lab.server_ip]
        assert theirs["yiaddr"].startswith(f"{lab.net}.") and theirs["file"] == ""
        assert (ours["yiaddr"], ours["siaddr"], ours["file"], ours["vendor"]) == (
            "0.0.0.0",
            lab.server_ip,
            "undionly.kpxe",
            "PXEClient",
        )
        ack = json.loads(lines[1])
        assert ack["src"] == [lab.server_ip, 4011] and ack["type"] == 5
        assert (ack["yiaddr"], ack["file"]) == ("0.0.0.0", "undionly.kpxe")
        assert stats["nak"] == 0 and stats["offered"] == 1 and stats["acked"] == 1
