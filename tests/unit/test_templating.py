"""Install templates: sandbox, names, per-format escaping, missing variables, shipped sets."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from provisiond import shipped
from provisiond.config import Config
from provisiond.errors import Invalid, NotFound
from provisiond.installs import RootfsRef, variables
from provisiond.model import Resource
from provisiond.templating import Renderer, TemplateError, check_name, format_for

ROOT = shipped.templates_dir() / "install"


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(ROOT)


def config(tmp: Path | None = None) -> Config:
    return Config(interface="br0", address=IPv4Address("10.77.0.1"),
                  state_dir=tmp or Path("/nonexistent/provisiond"))  # fmt: skip


def resource(firmware: str = "bios") -> Resource:
    return Resource(id=7, mac="52:54:00:12:34:56", name="web1", ip="10.77.0.50", macs=None,
                    inventory={"disks": [{"name": "vda"}], "firmware": firmware})  # fmt: skip


INSTALLER_PARAMS = {"mirror_host": "mirror.example", "repo": "http://10.77.0.1/rocky",
                    "windows_admin_password": "s3cret",
                    "windows_share": "\\\\10.77.0.1\\win"}  # fmt: skip


def vars_for(name="fai-debian-12", firmware="bios", **params):
    return variables(config(), resource(firmware), None, name, {**INSTALLER_PARAMS, **params},
                     token="tok123", rootfs=RootfsRef("debian-12", "ab" * 32, 4096))  # fmt: skip


# --- escaping -------------------------------------------------------------------

ESCAPES = [
    # (format, value, expected output or None for an error)
    ("shell", "web1", "web1"),
    ("shell", "a b", "'a b'"),
    ("shell", "it's", "'it'\"'\"'s'"),
    ("shell", "$(reboot)", "'$(reboot)'"),
    ("shell", "x;rm -rf /", "'x;rm -rf /'"),
    ("shell", "nul\0", None),
    ("yaml", "web1", '"web1"'),
    ("yaml", "a: b\n- c", '"a: b\\n- c"'),
    ("yaml", 3, "3"),
    ("yaml", True, "true"),
    ("xml", "a<b>&\"'", "a&lt;b&gt;&amp;&quot;&apos;"),
    ("xml", "bell\x07", None),
    ("cmdline", "console=ttyS0,115200", "console=ttyS0,115200"),
    ("cmdline", "a b", None),
    ("cmdline", "a;reboot", None),
    ("cmdline", "x&&y", None),
    ("cmdline", "x||y", None),
    ("cmdline", "${net0/ip}", None),
    ("cmdline", "tab\there", None),
    ("cmdline", 'quote"', None),
    ("text", "web1", "web1"),
    ("text", "two\nlines", None),
    ("text", "cr\r", None),
    ("text", "esc\x1b[2J", None),
    ("cmd", "\\\\10.77.0.1\\win", "\\\\10.77.0.1\\win"),
    ("cmd", "share & del C:", None),
    ("cmd", "a|b", None),
    ("cmd", "%PATH%", None),
    ("cmd", "a^b", None),
    ("cmd", "a>b", None),
    ("cmd", "two\nlines", None),
]


@pytest.mark.parametrize("fmt,value,expected", ESCAPES)
def test_escape_per_format(renderer, fmt, value, expected):
    render = lambda: renderer.render_text("t", "{{ v }}", fmt, {"v": value})  # noqa: E731
    if expected is None:
        with pytest.raises(TemplateError) as err:
            render()
        assert "template t:" in str(err.value)
    else:
        assert render() == expected


def test_explicit_filter_is_not_escaped_twice(renderer):
    out = renderer.render_text("t", "x={{ v|sh }} y={{ v|yaml }}", "shell", {"v": "a b"})
    assert out == "x='a b' y=\"a b\""


FORMATS = [
    ("post/10-x.sh", "shell"), ("target/etc/provisiond/firstboot.env", "shell"),
    ("ks.cfg", "shell"), ("user-data", "yaml"), ("meta-data", "yaml"), ("a.yaml", "yaml"),
    ("autounattend.xml", "xml"), ("cmdline", "cmdline"), ("target/etc/hostname", "text"),
    ("preseed.cfg", "text"), ("partitions.sfdisk", "text"), ("startnet.cmd", "cmd"),
    ("x.bat", "cmd"),
]  # fmt: skip


@pytest.mark.parametrize("path,fmt", FORMATS)
def test_format_by_file_name(path, fmt):
    assert format_for(path) == fmt


# --- names and the sandbox ---------------------------------------------------------

NAMES = [
    ("fai-debian-12", True), ("fai-debian-12/target/root/.ssh/authorized_keys", True),
    ("/etc/passwd", False), ("../secret", False), ("a/../../b", False), ("a/./b", False),
    ("", False), ("A", False), ("a\\b", False), ("a b", False), ("a/", False),
]  # fmt: skip


@pytest.mark.parametrize("name,ok", NAMES)
def test_template_names(name, ok):
    if ok:
        assert check_name(name) == name
    else:
        with pytest.raises(TemplateError, match="template name"):
            check_name(name)


@pytest.mark.parametrize("name", ["/etc/passwd", "../ipxe/kernel.ipxe", "fai-debian-12/../x"])
def test_renderer_refuses_path_tricks(renderer, name):
    with pytest.raises(TemplateError):
        renderer.render(name, vars_for())


ESCAPES_FROM_SANDBOX = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ params.__class__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'] }}",
    "{% include '/etc/passwd' %}",
    "{% include '../../pyproject.toml' %}",
]


@pytest.mark.parametrize("text", ESCAPES_FROM_SANDBOX)
def test_sandbox_escapes_fail_clearly(renderer, text):
    with pytest.raises(TemplateError) as err:
        renderer.render_text("evil", text, "text", vars_for())
    msg = str(err.value)
    assert msg.startswith("template evil:")
    assert "sandbox" in msg or "template name" in msg or "undefined" in msg


@pytest.mark.parametrize(
    "text,var",
    [("{{ nope }}", "nope"), ("{{ params.static_gateway }}", "static_gateway"),
     ("{{ server.nothing }}", "nothing")],
)  # fmt: skip
def test_missing_variable_names_template_and_variable(renderer, text, var):
    with pytest.raises(TemplateError) as err:
        renderer.render_text("fai-debian-12/x", text, "text", vars_for())
    assert str(err.value).startswith("template fai-debian-12/x: variable " + repr(var))
    assert err.value.field == var


def test_static_network_without_address_names_the_file_and_param(renderer):
    with pytest.raises(TemplateError) as err:
        renderer.render("fai-debian-12", vars_for(network="static"))
    assert "fai-debian-12/target/etc/systemd/network/10-provisiond.network" in str(err.value)
    assert "'address'" in str(err.value)


# --- parameters ------------------------------------------------------------------------

BAD_PARAMS = [
    ({"hostname": "web1\nevil"}, "hostname"), ({"hostname": "Web_1"}, "hostname"),
    ({"disk": "/dev/../etc/passwd"}, "disk"), ({"disk": "sda"}, "disk"),
    ({"firmware": "coreboot"}, "firmware"), ({"network": "wifi"}, "network"),
    ({"prefix": "40"}, "prefix"),
]  # fmt: skip


@pytest.mark.parametrize("params,field", BAD_PARAMS)
def test_bad_parameters_are_refused_before_rendering(params, field):
    with pytest.raises(Invalid) as err:
        vars_for(**params)
    assert err.value.field == field


@pytest.mark.parametrize(
    "params,fragment",
    [({"kernel_args": "quiet;reboot"}, "';'"), ({"kernel_args": "a&&b"}, "'&&'"),
     ({"domain": "x\ny"}, "newline"), ({"kernel_args": "x\x1b"}, "control characters")],
)  # fmt: skip
def test_injection_through_parameters_fails(renderer, params, fragment):
    with pytest.raises(TemplateError) as err:
        renderer.render("fai-debian-12", vars_for(**params))
    assert fragment in str(err.value)


def test_installer_cmdline_refuses_separators(renderer):
    tset = renderer.get("debian-preseed")
    with pytest.raises(TemplateError, match="'&&'"):
        renderer.cmdline(tset, vars_for("debian-preseed", console="ttyS0&&x"))


# --- the shipped sets ----------------------------------------------------------------

FAI_FILES = {
    "bios": {"target/boot/extlinux/extlinux.conf"},
    "uefi": {"target/boot/efi/loader/loader.conf",
             "target/boot/efi/loader/entries/provisiond.conf"},
}  # fmt: skip


def test_shipped_sets(renderer):
    kinds = {s.name: s.kind for s in renderer.sets()}
    assert kinds == {"fai-debian-12": "fai", "debian-preseed": "preseed",
                     "ubuntu-autoinstall": "autoinstall", "rhel-kickstart": "kickstart",
                     "windows-unattend": "unattend"}  # fmt: skip


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_fai_set_renders_per_firmware(renderer, firmware):
    out = renderer.render("fai-debian-12", vars_for(firmware=firmware, hostname="db-7"))
    other = FAI_FILES["uefi" if firmware == "bios" else "bios"]
    assert FAI_FILES[firmware] <= set(out) and not other & set(out)
    assert out["target/etc/hostname"] == "db-7\n"
    assert out["bootloader"].strip() == {"bios": "extlinux", "uefi": "systemd-boot"}[firmware]
    label = {"bios": "label: dos", "uefi": "label: gpt"}[firmware]
    assert label in out["partitions.sfdisk"]
    assert "PROVISIOND_TOKEN=tok123" in out["target/etc/provisiond/firstboot.env"]
    assert "size 4096" in out["rootfs"] and "ab" * 32 in out["rootfs"]
    assert [p for p in out if p.startswith("post/")] == sorted(p for p in out if "post/" in p)


def test_single_file_of_a_set(renderer):
    out = renderer.render("fai-debian-12/target/etc/hostname", vars_for(hostname="solo"))
    assert out == {"target/etc/hostname": "solo\n"}
    with pytest.raises(NotFound, match="files of fai-debian-12"):
        renderer.render("fai-debian-12/etc/nothing", vars_for())


def test_unknown_set_lists_the_known(renderer):
    with pytest.raises(NotFound, match=r"known: .*fai-debian-12"):
        renderer.get("solaris")


@pytest.mark.parametrize("name", ["debian-preseed", "ubuntu-autoinstall", "rhel-kickstart"])
def test_installer_cmdlines_carry_the_answer_url(renderer, name):
    tset = renderer.get(name)
    line = renderer.cmdline(tset, vars_for(name))
    assert "http://10.77.0.1:8080/install/v1/7/tok123" in line
    assert "\n" not in line


def test_windows_installer_gets_answer_and_startnet_as_initrds(renderer):
    """WinPE (wimboot) reads no kernel arguments: the one-time answer URL and startnet.cmd
    come as extra initrds that wimboot injects into X:\\Windows\\System32."""
    tset = renderer.get("windows-unattend")
    v = vars_for("windows-unattend")
    urls = renderer.initrd_urls(tset, v)
    base = "http://10.77.0.1:8080/install/v1/7/tok123"
    assert urls == [f"{base}/autounattend.xml", f"{base}/startnet.cmd"]
    cmd = renderer.render("windows-unattend", v)["startnet.cmd"]
    assert "net use S: \\\\10.77.0.1\\win\n" in cmd
    assert "S:\\setup.exe /unattend:X:\\Windows\\System32\\autounattend.xml" in cmd
    with pytest.raises(TemplateError, match=r"startnet\.cmd.*cmd\.exe"):
        renderer.render(
            "windows-unattend", vars_for("windows-unattend", windows_share="\\\\h\\s & format c:")
        )
