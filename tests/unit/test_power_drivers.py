"""Power drivers' pure parts: magic packet, ipmitool lines and answers, Redfish resets."""

from __future__ import annotations

import pytest

from provisiond.power import (
    BadCredentials,
    BmcUnreachable,
    NotSupported,
    PowerAction,
    PowerError,
    PowerSettings,
    PowerState,
    driver_for,
    ipmi,
    redfish,
    wol,
)

A = PowerAction
MAC = "52:54:00:12:34:56"


# --- Wake-on-LAN ------------------------------------------------------------


@pytest.mark.parametrize("mac", [MAC, "52-54-00-12-34-56", "525400123456", "52:54:00:12:34:56 "])
def test_magic_packet_round_trip(mac):
    packet = wol.magic_packet(mac)
    assert len(packet) == 102 and packet[:6] == b"\xff" * 6
    assert wol.target_of(packet) == MAC


@pytest.mark.parametrize("bad", ["", "52:54:00:12:34", "52:54-00:12:34:56", "zz:54:00:12:34:56"])
def test_magic_packet_rejects_bad_mac(bad):
    with pytest.raises(ValueError, match="not a MAC"):
        wol.magic_packet(bad)


@pytest.mark.parametrize(
    "packet",
    [b"", b"\xff" * 6 + bytes(6) * 15, b"\xfe" + b"\xff" * 5 + bytes.fromhex("525400123456") * 16,
     b"\xff" * 6 + bytes.fromhex("525400123456") * 15 + bytes.fromhex("525400123457")],
)  # fmt: skip
def test_target_of_rejects_non_magic(packet):
    assert wol.target_of(packet) is None


@pytest.mark.parametrize("action", [A.OFF, A.CYCLE])
def test_wol_only_switches_on(action):
    d = driver_for(PowerSettings(driver="wol", mac=MAC))
    assert d.status() == PowerState.UNKNOWN
    with pytest.raises(NotSupported, match="only switches machines on"):
        d.act(action)


def test_wol_rejects_a_non_ip_broadcast():
    with pytest.raises(PowerError, match="broadcast IPv4"):
        driver_for(PowerSettings(driver="wol", mac=MAC, address="bmc.example"))


# --- IPMI -------------------------------------------------------------------


class FakeIpmitool:
    """Answers ipmitool calls from a table keyed by the last words of the command line."""

    def __init__(self, answers: dict[str, ipmi.Answer]) -> None:
        self.answers, self.calls = answers, []

    def __call__(self, argv, env, timeout):
        self.calls.append((list(argv), dict(env)))
        return self.answers[" ".join(argv[-2:])]


def ok(out: str = "") -> ipmi.Answer:
    return ipmi.Answer(0, out, "")


def ipmi_driver(fake, **options) -> ipmi.IpmiDriver:
    s = PowerSettings(driver="ipmi", address="10.9.0.5", user="admin", password="pw-Secret",
                      options=options)  # fmt: skip
    return ipmi.IpmiDriver(s, run=fake)


def test_ipmi_password_goes_by_environment_never_argv():
    fake = FakeIpmitool({"power status": ok("Chassis Power is on\n")})
    assert ipmi_driver(fake).status() == PowerState.ON
    argv, env = fake.calls[0]
    assert "pw-Secret" not in " ".join(argv)
    assert env == {"IPMI_PASSWORD": "pw-Secret"}
    i = argv.index
    assert argv[i("-I") + 1] == "lanplus" and argv[i("-C") + 1] == "3" and "-E" in argv
    assert argv[i("-H") + 1] == "10.9.0.5" and argv[i("-p") + 1] == "623"


def test_ipmi_options_pick_cipher_and_port():
    fake = FakeIpmitool({"power status": ok("Chassis Power is off\n")})
    assert ipmi_driver(fake, cipher=17, port=6230).status() == PowerState.OFF
    argv = fake.calls[0][0]
    assert argv[argv.index("-C") + 1] == "17" and argv[argv.index("-p") + 1] == "6230"


@pytest.mark.parametrize(
    ("state", "action", "sent"),
    [
        ("on", A.OFF, "power off"),
        ("off", A.ON, "power on"),
        ("on", A.CYCLE, "power cycle"),
        ("off", A.CYCLE, "power on"),  # a machine that is off is switched on, not cycled
    ],
)
def test_ipmi_actions(state, action, sent):
    fake = FakeIpmitool({"power status": ok(f"Chassis Power is {state}\n"), sent: ok()})
    ipmi_driver(fake).act(action)
    assert " ".join(fake.calls[-1][0][-2:]) == sent


@pytest.mark.parametrize(
    ("stderr", "error"),
    [
        ("> RAKP 2 HMAC is invalid\nError: Unable to establish IPMI v2 / RMCP+ session",
         BadCredentials),
        ("RAKP 2 message indicates an error : unauthorized name\nError: Unable to establish",
         BadCredentials),
        ("Get Auth Capabilities error\nError issuing Get Channel Authentication Capabilities "
         "request\nError: Unable to establish IPMI v2 / RMCP+ session", BmcUnreachable),
        ("timed out after 10 s", BmcUnreachable),
        ("Set Chassis Power Control to Cycle failed: Invalid data field in request",
         NotSupported),
        ("something else broke", PowerError),
    ],
)  # fmt: skip
def test_ipmi_failures_are_told_apart(stderr, error):
    fake = FakeIpmitool(
        {"power status": ipmi.Answer(1, "", "Loading IANA PEN Registry...\n" + stderr)}
    )
    with pytest.raises(error) as info:
        ipmi_driver(fake).status()
    assert type(info.value) is error
    assert "10.9.0.5" in str(info.value) and "pw-Secret" not in str(info.value)


def test_ipmi_needs_an_address():
    with pytest.raises(PowerError, match="no BMC address"):
        driver_for(PowerSettings(driver="ipmi"))


# --- Redfish ----------------------------------------------------------------

ALL = ["On", "ForceOff", "GracefulShutdown", "ForceRestart", "PowerCycle"]
SUSHY = ["On", "ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart", "Nmi", "ForceOn"]


@pytest.mark.parametrize(
    ("action", "allowed", "state", "sent"),
    [
        (A.ON, ALL, PowerState.OFF, ["On"]),
        (A.ON, ["ForceOn", "ForceOff"], PowerState.OFF, ["ForceOn"]),
        (A.OFF, ALL, PowerState.ON, ["ForceOff"]),
        (A.OFF, ["GracefulShutdown", "On"], PowerState.ON, ["GracefulShutdown"]),
        (A.CYCLE, ALL, PowerState.ON, ["PowerCycle"]),
        (A.CYCLE, SUSHY, PowerState.ON, ["ForceRestart"]),
        (A.CYCLE, ["On", "ForceOff"], PowerState.ON, ["ForceOff", "On"]),
        (A.CYCLE, ALL, PowerState.OFF, ["On"]),
        (A.CYCLE, None, PowerState.ON, ["PowerCycle"]),  # no list: the standard value
    ],
)
def test_redfish_reset_type(action, allowed, state, sent):
    assert redfish.reset_type(action, allowed, state) == sent


def test_redfish_reset_type_unsupported():
    with pytest.raises(NotSupported, match="none of them does off"):
        redfish.reset_type(A.OFF, ["On", "Nmi"], PowerState.ON)


@pytest.mark.parametrize(
    ("address", "where"),
    [("10.0.0.9", "https://10.0.0.9"), ("bmc:8443", "https://bmc:8443"),
     ("http://127.0.0.1:8000", "http://127.0.0.1:8000")],
)  # fmt: skip
def test_redfish_address_forms(address, where):
    d = driver_for(PowerSettings(driver="redfish", address=address))
    assert d.where == where


@pytest.mark.parametrize("address", ["", "ftp://bmc", "https://"])
def test_redfish_bad_address(address):
    with pytest.raises(PowerError):
        driver_for(PowerSettings(driver="redfish", address=address))


def test_unknown_driver_names_the_known_ones():
    with pytest.raises(NotSupported, match=r"known: .*ipmi, .*redfish, .*wol"):
        driver_for(PowerSettings(driver="smoke-signal"))


def test_settings_repr_hides_the_password():
    assert "pw-Secret" not in repr(PowerSettings(driver="ipmi", password="pw-Secret"))
