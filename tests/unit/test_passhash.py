"""SHA-512 crypt (passhash) and how appliance parameters keep passwords out of clear text."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from provisiond import passhash, shipped
from provisiond.config import Config
from provisiond.errors import Invalid
from provisiond.installs import open_params, protect_params, variables
from provisiond.model import Resource
from provisiond.secretbox import is_sealed
from provisiond.templating import Renderer

# Test vectors of the specification (https://www.akkadia.org/drepper/SHA-crypt.txt)
SPEC = [
    ("Hello world!", "saltstring", None,
     "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEd"
     "FCoEOfaS35inz1"),
    ("Hello world!", "saltstringsaltstring", 10000,
     "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8"
     "vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."),
    ("This is just a test", "toolongsaltstring", 5000,
     "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1"
     "yxdYcz/e1JSbq3y6JMxxl8audkUEm0"),
    ("a very much longer text to encrypt.  This one even stretches over morethan one line.",
     "anotherlongsaltstring", 1400,
     "$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmLs66x"
     "9t0oSwbtEW7o7UmJEiDwGqd8p4ur1"),
    ("we have a short salt string but not a short password", "short", 77777,
     "$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5CCaUeOxF"
     "mtlcGZelFl5CxtgfiAc0"),
    ("a short string", "asaltof16chars..", 123456,
     "$6$rounds=123456$asaltof16chars..$BtCwjqMJGx5hrJhZywWvt0RLE8uZ4oPwcelCjmw2kSYu.Ec6ycULevoB"
     "K25fs2xXgMNrCzIMVcgEJAstJeonj1"),
    ("the minimum number is still observed", "roundstoolow", 10,
     "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4"
     "ZEQpyUNGc0dqbpBYYBaHHrsX."),
]  # fmt: skip


@pytest.mark.parametrize("password,salt,rounds,expected", SPEC)
def test_specification_vectors(password, salt, rounds, expected):
    assert passhash.sha512_crypt(password, salt, rounds) == expected
    assert passhash.verify(password, expected)
    assert not passhash.verify(password + "x", expected)


def test_fresh_salt_each_time():
    a, b = passhash.sha512_crypt("pw"), passhash.sha512_crypt("pw")
    assert a != b and a.startswith("$6$") and passhash.verify("pw", a) and passhash.verify("pw", b)


@pytest.mark.parametrize("salt", ["bad salt", "$", "é"])
def test_bad_salt_is_refused(salt):
    with pytest.raises(passhash.PasswordError, match="salt"):
        passhash.sha512_crypt("pw", salt)


@pytest.mark.parametrize(
    "value,ok",
    [("$6$salt$abc/def.", True), ("$y$j9T$abcd$efgh", True), ("!", True), ("*", True),
     ("hunter2", False), ("$6$", False), ("", False), ("$6$a b$c", False)],
)  # fmt: skip
def test_is_crypt_hash(value, ok):
    assert passhash.is_crypt_hash(value) is ok


def test_root_password_is_stored_only_as_its_hash(tmp_path):
    out = protect_params({"root_password": "hunter2", "hostname": "n1"}, tmp_path)
    assert "root_password" not in out and "hunter2" not in str(out)
    assert passhash.verify("hunter2", out["root_password_hash"])
    assert out["hostname"] == "n1"
    assert not (tmp_path / "secret.key").exists()  # nothing sealed: no key made


def test_other_secrets_are_sealed_and_opened_for_rendering(tmp_path):
    out = protect_params({"windows_admin_password": "Pa<ss>", "chap_secret": "s3"}, tmp_path)
    assert all(is_sealed(v) for v in out.values()) and "Pa<ss>" not in str(out)
    assert protect_params(out, tmp_path) == out  # sealed values stay as they are
    assert open_params(out, tmp_path) == {"windows_admin_password": "Pa<ss>", "chap_secret": "s3"}


@pytest.mark.parametrize(
    "params,field",
    [({"root_password_hash": "hunter2"}, "root_password_hash"),
     ({"root_password": ""}, "root_password"),
     ({"root_password": "a", "root_password_hash": "$6$s$h"}, "root_password")],
)  # fmt: skip
def test_bad_password_params_are_refused(tmp_path, params, field):
    with pytest.raises(Invalid) as err:
        protect_params(params, tmp_path)
    assert err.value.field == field


@pytest.mark.parametrize("name,path", [("debian-preseed", "preseed.cfg"),
                                       ("rhel-kickstart", "ks.cfg"),
                                       ("ubuntu-autoinstall", "user-data")])  # fmt: skip
def test_rendered_answer_files_carry_the_hash_never_the_password(tmp_path, name, path):
    cfg = Config(interface="br0", address=IPv4Address("10.77.0.1"), state_dir=tmp_path)
    res = Resource(id=4, mac="52:54:00:12:34:56", name="node4", ip=None, macs=None,
                   inventory={"disks": [{"name": "sda"}]})  # fmt: skip
    params = {"root_password": "correct horse", "mirror_host": "m.example",
              "repo": "http://10.77.0.1/os"}  # fmt: skip
    text = Renderer(shipped.templates_dir() / "install").render(
        name, variables(cfg, res, None, name, params, token="t")
    )[path]
    assert "correct horse" not in text
    hashed = next(w.strip("\"'") for w in text.split() if w.strip("\"'").startswith("$6$"))
    assert passhash.verify("correct horse", hashed)
