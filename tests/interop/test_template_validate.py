"""Every shipped template set, rendered, passes its format's own validator.

Preseeds: ``debconf-set-selections -c`` (Debian's debconf). Kickstarts:
pykickstart's ``ksvalidator`` (PyPI). Autoinstall: valid YAML with the keys
subiquity requires. ``unattend.xml``: well-formed XML in the unattend
namespace, with the SAN-boot settings. FAI-style: the partition script is
accepted by ``sfdisk --no-act`` on a disk-sized file. Each set is rendered for
BIOS and UEFI machines, with DHCP and with a static address.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from provisiond import shipped
from provisiond.config import Config
from provisiond.installs import RootfsRef, variables
from provisiond.model import Resource
from provisiond.templating import Renderer

UNATTEND = "{urn:schemas-microsoft-com:unattend}"
STATIC = {"network": "static", "address": "10.77.0.60", "prefix": "24",
          "gateway": "10.77.0.1", "dns": "10.77.0.1 10.77.0.2"}  # fmt: skip
BASE = {"mirror_host": "mirror.example", "repo": "http://10.77.0.1/rocky/9/BaseOS/x86_64/os",
        "windows_admin_password": "Pa<ss>&word", "packages": "htop vim",
        "windows_share": "\\\\10.77.0.1\\win2022",
        "users": "alice:$6$salt$hash", "ssh_keys": "ssh-ed25519 AAAAC3Nza extra@key",
        "root_password_hash": "$6$rounds=5000$salt$abc/def."}  # fmt: skip
CASES = [(fw, net) for fw in ("bios", "uefi") for net in ("dhcp", "static")]


def render(name: str, firmware: str, network: str, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "ssh").mkdir(exist_ok=True)
    (tmp_path / "ssh" / "id_ed25519.pub").write_text("ssh-ed25519 AAAAC3NzaServer provisiond\n")
    cfg = Config(interface="br0", address=IPv4Address("10.77.0.1"), state_dir=tmp_path)
    res = Resource(id=4, mac="52:54:00:12:34:56", name="node4", ip=None, macs=None,
                   inventory={"disks": [{"name": "sda"}], "firmware": firmware})  # fmt: skip
    r = Renderer(shipped.templates_dir() / "install")
    tset = r.get(name)
    params = {**BASE, **(STATIC if network == "static" else {})}
    v = variables(cfg, res, None, name, params, token="tok-abc",
                  rootfs=RootfsRef("debian-12", "0" * 64, 1), answer=tset.answer)  # fmt: skip
    return r.render(name, v)


def need(tool: str, package: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip(reason=f"{tool} not installed ({package})")
    return path


@pytest.mark.parametrize("firmware,network", CASES)
def test_preseed_passes_debconf_set_selections(tmp_path, firmware, network):
    tool = need("debconf-set-selections", "apt-get install debconf")
    text = render("debian-preseed", firmware, network, tmp_path)["preseed.cfg"]
    path = tmp_path / "preseed.cfg"
    path.write_text(text)
    run = subprocess.run([tool, "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and not run.stderr, run.stderr
    assert "d-i netcfg/get_hostname string node4" in text
    # a broken line is caught by the same check (the validator can fail)
    path.write_text(text + "d-i broken-line-without-type\n")
    bad = subprocess.run([tool, "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 or bad.stderr


@pytest.mark.parametrize("firmware,network", CASES)
def test_kickstart_passes_ksvalidator(tmp_path, firmware, network):
    tool = need("ksvalidator", "pip install pykickstart")
    text = render("rhel-kickstart", firmware, network, tmp_path)["ks.cfg"]
    path = tmp_path / "ks.cfg"
    path.write_text(text)
    run = subprocess.run([tool, "-v", "RHEL9", str(path)], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    path.write_text(text.replace("rootpw --iscrypted", "rootpw --no-such-option"))
    bad = subprocess.run([tool, "-v", "RHEL9", str(path)], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert bad.returncode != 0


@pytest.mark.parametrize("firmware,network", CASES)
def test_autoinstall_is_yaml_with_the_required_keys(tmp_path, firmware, network):
    yaml = pytest.importorskip("yaml", reason="pyyaml not installed (pip install pyyaml)")
    files = render("ubuntu-autoinstall", firmware, network, tmp_path)
    assert files["user-data"].startswith("#cloud-config\n")
    doc = yaml.safe_load(files["user-data"])["autoinstall"]
    assert doc["version"] == 1
    assert doc["identity"]["hostname"] == "node4"
    assert {"username", "password"} <= set(doc["identity"])
    assert doc["storage"]["layout"]["match"]["path"] == "/dev/sda"
    assert "ssh-ed25519 AAAAC3NzaServer provisiond" in doc["ssh"]["authorized-keys"]
    assert doc["packages"] == ["htop", "vim"]
    if network == "static":
        eth = doc["network"]["ethernets"]["boot"]
        assert eth["addresses"] == ["10.77.0.60/24"] and eth["match"]["macaddress"]
    meta = yaml.safe_load(files["meta-data"])
    assert meta["local-hostname"] == "node4" and meta["instance-id"]


@pytest.mark.parametrize("firmware,network", CASES)
def test_unattend_is_well_formed_in_the_unattend_namespace(tmp_path, firmware, network):
    text = render("windows-unattend", firmware, network, tmp_path)["autounattend.xml"]
    root = ET.fromstring(text.encode())
    assert root.tag == f"{UNATTEND}unattend"
    passes = {s.get("pass") for s in root.findall(f"{UNATTEND}settings")}
    assert {"windowsPE", "offlineServicing", "specialize", "oobeSystem"} <= passes
    assert {e.text for e in root.iter(f"{UNATTEND}SanPolicy")} == {"1"}  # SAN disks online
    assert root.find(f".//{UNATTEND}ComputerName").text == "node4"
    assert root.find(f".//{UNATTEND}AdministratorPassword/{UNATTEND}Value").text == "Pa<ss>&word"
    parts = root.findall(f".//{UNATTEND}CreatePartition")
    assert len(parts) == (3 if firmware == "uefi" else 1)


@pytest.mark.parametrize("firmware,network", CASES)
def test_fai_partitions_pass_sfdisk(tmp_path, firmware, network):
    tool = need("sfdisk", "apt-get install fdisk")
    files = render("fai-debian-12", firmware, network, tmp_path)
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as fh:
        fh.truncate(2 * 2**30)
    run = subprocess.run([tool, "--no-act", str(disk)], input=files["partitions.sfdisk"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    label = "gpt" if firmware == "uefi" else "dos"
    assert f"Disklabel type: {label}" in run.stdout
    for line in files["target/etc/fstab"].splitlines():
        if line and not line.startswith("#"):
            assert len(line.split()) == 6, line
    if network == "static":
        assert "Address=10.77.0.60/24" in files["target/etc/systemd/network/10-provisiond.network"]


@pytest.mark.parametrize("password", ["hunter2", "correct horse battery staple", "ünïcødé pw",
                                      "x" * 200])  # fmt: skip
def test_password_hash_matches_openssl(password):
    """passhash's SHA-512 crypt gives what `openssl passwd -6` (glibc's scheme) gives."""
    from provisiond.passhash import sha512_crypt

    tool = need("openssl", "apt-get install openssl")
    ours = sha512_crypt(password)
    salt = ours.split("$")[2]
    run = subprocess.run([tool, "passwd", "-6", "-salt", salt, "-stdin"], input=password,
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == ours
