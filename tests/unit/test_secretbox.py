"""Secret box: sealed values round-trip, are not clear text, and a foreign key fails loudly."""

import stat

import pytest

from provisiond.power import NotSupported, PowerSettings, driver_for
from provisiond.secretbox import SecretBox, SecretBoxError, is_sealed


def test_seal_round_trip_and_key_file_mode(tmp_path):
    box = SecretBox(tmp_path / "secret.key")
    sealed = box.seal("hunter2-bmc")
    assert is_sealed(sealed)
    assert "hunter2" not in sealed
    assert box.seal("hunter2-bmc") != sealed  # fresh IV each time
    assert SecretBox(tmp_path / "secret.key").open(sealed) == "hunter2-bmc"
    assert stat.S_IMODE((tmp_path / "secret.key").stat().st_mode) == 0o600


@pytest.mark.parametrize("value", ["plain", "", "sealed:v1:not-a-token"])
def test_open_refuses_unsealed_or_damaged(tmp_path, value):
    with pytest.raises(SecretBoxError):
        SecretBox(tmp_path / "k").open(value)


def test_other_server_key_cannot_open(tmp_path):
    sealed = SecretBox(tmp_path / "a.key").seal("x")
    with pytest.raises(SecretBoxError, match="server key changed"):
        SecretBox(tmp_path / "b.key").open(sealed)


def test_unknown_power_driver_is_named():
    with pytest.raises(NotSupported, match="unknown power driver 'nope'"):
        driver_for(PowerSettings(driver="nope"))


def test_settings_of_opens_the_sealed_password(tmp_path):
    from types import SimpleNamespace

    from provisiond.power import settings_of

    box = SecretBox(tmp_path / "k")
    row = SimpleNamespace(
        power_driver="ipmi",
        power_address="10.0.0.9",
        power_user="admin",
        power_secret=box.seal("pw"),
        power_options={"port": 623},
        mac="52:54:00:00:00:01",
    )
    s = settings_of(row, box.open)
    assert (s.driver, s.address, s.user, s.password, s.options) == (
        "ipmi",
        "10.0.0.9",
        "admin",
        "pw",
        {"port": 623},
    )
    assert "pw" not in repr(s)
    assert settings_of(SimpleNamespace(power_driver=None), box.open) is None


def test_two_processes_making_the_key_at_once_agree(tmp_path, monkeypatch):
    """Another process creates the key between our 'not there' and our create: we use its key."""
    import provisiond.secretbox as sb

    path = tmp_path / "state" / "secret.key"
    theirs = SecretBox(tmp_path / "their.key")  # the winner's key, written before ours lands
    real_generate = sb.Fernet.generate_key

    def generate_while_the_other_wins():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((tmp_path / "their.key").read_bytes())
        return real_generate()

    monkeypatch.setattr(sb.Fernet, "generate_key", staticmethod(generate_while_the_other_wins))
    ours = SecretBox(path)
    assert ours.open(theirs.seal("same key")) == "same key"
    assert sorted(p.name for p in path.parent.iterdir()) == ["secret.key"]  # no temp file left


def test_concurrent_makers_share_one_key(tmp_path):
    """Many threads create the key at once: every box opens what any other sealed."""
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "secret.key"
    with ThreadPoolExecutor(8) as pool:
        boxes = list(pool.map(lambda _: SecretBox(path), range(16)))
    sealed = boxes[0].seal("v")
    assert all(b.open(sealed) == "v" for b in boxes)


def test_empty_key_file_is_named(tmp_path):
    (tmp_path / "secret.key").write_bytes(b"")
    with pytest.raises(SecretBoxError, match=r"secret\.key is empty"):
        SecretBox(tmp_path / "secret.key")
