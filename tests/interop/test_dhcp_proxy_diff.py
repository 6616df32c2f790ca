"""proxyDHCP answers diffed against dnsmasq's ``--dhcp-range=...,proxy`` answers.

provisiond (``python -m provisiond.standalone dhcp``, proxy mode) on ``.1`` and dnsmasq in
proxy mode on ``.3`` (its own namespace) hear the same DISCOVERs from one
scapy client: a BIOS PXE ROM, a UEFI x64 PXE ROM and iPXE. The client then
sends each server a PXE 2.1 REQUEST to port 4011. Both servers are given the
same boot files, so what is left to compare is the shape of the answers.

Every answer must be a ProxyDHCP answer (option 60 ``PXEClient``, option 54 =
the sender, no yiaddr, no lease time; the 4011 answer from source port 4011).
Where provisiond and dnsmasq differ, the difference is listed in
``EXPECTED_DIFFERENCES`` with the reason: a change on either side fails here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from pxe.dhcp.codec import Opt, decode
from tests.dhcplab import Server, write_config
from tests.netlab import Lab

pytestmark = pytest.mark.interop
MAC = "52:54:00:bb:00:07"
URL = "http://{server}:8080/boot/52-54-00-bb-00-07.ipxe"  # provisiond's iPXE script URL

CLIENT = r"""
import json, socket, sys, time
from scapy.all import AsyncSniffer, BOOTP, DHCP, IP, UDP, Ether, conf, sendp
conf.verb = 0
mac, me, servers = sys.argv[1], sys.argv[2], sys.argv[3:]
ch = bytes.fromhex(mac.replace(":", ""))
uuid = ("pxe_client_machine_identifier", b"\x00" + bytes(range(16)))
KINDS = {
    "pxe_bios": [("vendor_class_id", b"PXEClient:Arch:00000:UNDI:002001"),
                 ("pxe_client_architecture", b"\x00\x00"),
                 ("pxe_client_network_interface", b"\x01\x02\x01"), uuid],
    "pxe_uefi": [("vendor_class_id", b"PXEClient:Arch:00007:UNDI:003016"),
                 ("pxe_client_architecture", b"\x00\x07"),
                 ("pxe_client_network_interface", b"\x01\x03\x10"), uuid],
    "ipxe": [("vendor_class_id", b"PXEClient:Arch:00000:UNDI:002001"),
             ("pxe_client_architecture", b"\x00\x00"), ("user_class", b"iPXE"),
             (175, b"\x13\x01\x01\x27\x01\x01\xeb\x03\x01\x15\x03")],
}
out = []
for i, (kind, opts) in enumerate(KINDS.items()):
    xid = 0x5EED00 + i
    disc = (Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
            / UDP(sport=68, dport=67) / BOOTP(chaddr=ch, xid=xid, flags=0x8000)
            / DHCP(options=[("message-type", "discover"), *opts, "end"]))
    sniff = AsyncSniffer(iface="eth0", lfilter=lambda p, x=xid: BOOTP in p and p[BOOTP].op == 2
                         and p[BOOTP].xid == x)
    sniff.start(); time.sleep(0.3); sendp(disc, iface="eth0"); time.sleep(1.5); sniff.stop()
    for p in sniff.results:
        out.append({"kind": kind, "phase": "offer", "src": [p[IP].src, p[UDP].sport],
                    "dport": p[UDP].dport, "data": bytes(p[BOOTP]).hex()})
    for server in servers:  # PXE 2.1 section 2.2.4: REQUEST to the proxy's port 4011
        req = bytes(BOOTP(chaddr=ch, xid=xid + 0x100, ciaddr=me)
                    / DHCP(options=[("message-type", "request"), ("server_id", server), *opts,
                                    "end"]))
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((me, 68)); s.settimeout(3)
        s.sendto(req, (server, 4011))
        try:
            data, src = s.recvfrom(2048)
            out.append({"kind": kind, "phase": "ack", "src": list(src), "dport": 68,
                        "data": data.hex()})
        except TimeoutError:
            pass
        s.close()
print(json.dumps(out), flush=True)
"""


def view(answer: dict) -> dict:
    """The fields that decide whether a PXE ROM / iPXE boots from this answer."""
    p = decode(bytes.fromhex(answer["data"]))
    sender = answer["src"][0]
    vendor = p.suboptions(Opt.VENDOR_SPECIFIC)
    return {
        "message": p.message_type,
        "vendor_class": p.text_opt(Opt.VENDOR_CLASS),
        "server_id_is_sender": p.ip_opt(Opt.SERVER_ID) == sender,
        "yiaddr": p.yiaddr,
        "lease_time": Opt.LEASE_TIME in p.options,
        "ports": (answer["src"][1], answer["dport"]),
        "next_server": "sender" if p.siaddr == sender else p.siaddr,
        "file": p.file.replace(sender, "{server}"),
        "discovery_control": vendor[6][0] if 6 in vendor else None,  # PXE 2.1 2.2.5, 43.6
        "boot_menu": 9 in vendor,  # 43.9: iPXE keeps a proxy offer with a menu or siaddr+file
    }


# (client, phase, field): (provisiond, dnsmasq) and why the difference is fine.
EXPECTED_DIFFERENCES = {
    # provisiond names the file at once (43.6 bit 3, "use the boot file");
    # dnsmasq sends a one-item boot menu with discovery restricted to its boot
    # server list (43.6 = 3, 43.8, 43.9) and names the file in both answers.
    ("pxe_bios", "offer", "discovery_control"): (8, 3),
    ("pxe_bios", "offer", "boot_menu"): (False, True),
    ("pxe_bios", "ack", "discovery_control"): (8, 3),
    ("pxe_bios", "ack", "boot_menu"): (False, True),
    # UEFI: neither sends option 43, so EDK2 asks again on port 4011 (seen in
    # tests/testbed/test_proxy_vm.py); dnsmasq names the file only there,
    # provisiond in the port 67 offer too.
    ("pxe_uefi", "offer", "file"): ("ipxe.efi", ""),
    # iPXE: dnsmasq's menu makes iPXE keep its offer (dhcp_has_pxeopts);
    # provisiond sets next-server instead, which iPXE ignores for an http:// URL.
    ("ipxe", "offer", "next_server"): ("sender", "0.0.0.0"),
    ("ipxe", "offer", "discovery_control"): (8, 3),
    ("ipxe", "offer", "boot_menu"): (False, True),
    ("ipxe", "ack", "next_server"): ("sender", "0.0.0.0"),
    ("ipxe", "ack", "discovery_control"): (8, 3),
    ("ipxe", "ack", "boot_menu"): (False, True),
}
EXPECTED_FILES = {"pxe_bios": "undionly.kpxe", "pxe_uefi": "ipxe.efi", "ipxe": URL}


def dnsmasq_proxy(lab: Lab, host, tmp_path) -> subprocess.Popen:
    """dnsmasq as a proxyDHCP server with the boot files provisiond hands out."""
    me, url = f"{lab.net}.3", URL.format(server=f"{lab.net}.3")
    return host.popen(
        ["dnsmasq", "--no-daemon", "--port=0", "--conf-file=/dev/null", "--interface=eth0",
         "--bind-interfaces", "--leasefile-ro", "--log-dhcp",
         f"--dhcp-range={lab.net}.0,proxy,255.255.255.0",
         "--dhcp-userclass=set:ipxe,iPXE",
         f"--dhcp-boot=tag:!ipxe,undionly.kpxe,,{me}", f"--dhcp-boot=tag:ipxe,{url}",
         "--pxe-service=tag:!ipxe,x86PC,boot,undionly.kpxe",
         f"--pxe-service=tag:ipxe,x86PC,ipxe,{url}",
         "--pxe-service=x86-64_EFI,boot,ipxe.efi"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "dnsmasq.log", "w"),
    )  # fmt: skip


@pytest.mark.skipif(
    not shutil.which("dnsmasq"), reason="needs dnsmasq (apt-get install dnsmasq-base)"
)
def test_proxy_answers_match_dnsmasq_where_it_matters(tmp_path):
    with Lab("pxdif") as lab:
        theirs_ip = f"{lab.net}.3"
        dns_host = lab.add_client(address=theirs_ip)
        client = lab.add_client(MAC, address=f"{lab.net}.50")
        dnsmasq = dnsmasq_proxy(lab, dns_host, tmp_path)
        server = Server(lab, write_config(tmp_path, lab, mode="proxy"))
        time.sleep(0.5)
        r = client.run([sys.executable, "-c", CLIENT, MAC, f"{lab.net}.50", lab.server_ip,
                        theirs_ip], check=False, timeout=60)  # fmt: skip
        dnsmasq.terminate()
        dnsmasq.wait(5)
        stats = server.stop()
    answers = json.loads(r.stdout.splitlines()[-1]) if r.stdout.strip() else []
    assert answers, f"client printed nothing: {r.stderr[-2000:]}"
    views = {(a["kind"], a["phase"], a["src"][0]): view(a) for a in answers}
    diffs = {}
    for kind in ("pxe_bios", "pxe_uefi", "ipxe"):
        for phase in ("offer", "ack"):
            ours = views.get((kind, phase, lab.server_ip))
            theirs = views.get((kind, phase, theirs_ip))
            assert ours and theirs, f"{kind} {phase}: missing an answer: {sorted(views)}"
            for v, expect_type in ((ours, 2 if phase == "offer" else 5), (theirs, None)):
                assert v["vendor_class"] == "PXEClient" and v["server_id_is_sender"], v
                assert v["yiaddr"] == "0.0.0.0" and not v["lease_time"], v
                assert v["ports"] == ((67, 68) if phase == "offer" else (4011, 68)), v
                assert expect_type is None or v["message"] == expect_type, v
            assert ours["next_server"] == "sender"
            assert ours["file"] == EXPECTED_FILES[kind].replace(lab.server_ip, "{server}")
            for field in ours:
                if ours[field] != theirs[field]:
                    diffs[(kind, phase, field)] = (ours[field], theirs[field])
    assert diffs == EXPECTED_DIFFERENCES
    assert (stats["offered"], stats["acked"], stats["nak"]) == (3, 3, 0)
