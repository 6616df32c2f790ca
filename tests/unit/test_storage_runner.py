"""Runner (real trivial commands) and FakeRunner: results, failures, secret redaction."""

from __future__ import annotations

import pytest

from storage.runner import CommandFailed, FakeRunner, Result, Runner, Secret, redact, show


def test_run_returns_output():
    res = Runner().run(["sh", "-c", "echo out; echo err >&2"])
    assert res == Result(0, "out\n", "err\n")


def test_failure_raises_with_rc_and_stderr():
    with pytest.raises(CommandFailed) as ei:
        Runner().run(["sh", "-c", "echo boom >&2; exit 3"])
    assert ei.value.rc == 3 and ei.value.stderr == "boom"


def test_check_false_returns_rc():
    assert Runner().run(["false"], check=False).rc == 1


def test_timeout_is_command_failed():
    with pytest.raises(CommandFailed, match="timed out"):
        Runner().run(["sleep", "5"], timeout=0.2)


def test_missing_program_is_command_failed():
    with pytest.raises(CommandFailed) as ei:
        Runner().run(["/nonexistent/prog"])
    assert ei.value.rc == 127


def test_secret_never_in_exception_even_if_echoed():
    secret = Secret("TopSecret1234")
    with pytest.raises(CommandFailed) as ei:
        Runner().run(["sh", "-c", 'echo "bad password $0" >&2; exit 1', secret])
    text = str(ei.value)
    assert "TopSecret1234" not in text and "***" in text
    assert "TopSecret1234" not in repr(secret)


def test_secret_reaches_the_program():
    assert Runner().run(["echo", Secret("s3cr3t")]).stdout == "s3cr3t\n"


@pytest.mark.parametrize(
    "argv, shown",
    [
        (["tgtadm", "--password", Secret("abc")], "tgtadm --password '***'"),
        (["a b", "c"], "'a b' c"),
    ],
)
def test_show_redacts(argv, shown):
    assert show(argv) == shown
    assert "abc" not in redact(argv)


def test_fake_runner_longest_prefix_and_sequences():
    fr = FakeRunner().on(["lvs"], "A").on(["lvs", "x"], "B", "C")
    assert fr.run(["lvs", "y"]).stdout == "A"
    assert [fr.run(["lvs", "x"]).stdout for _ in range(3)] == ["B", "C", "C"]
    assert fr.calls[0] == ["lvs", "y"]


def test_fake_runner_failure_and_strict():
    fr = FakeRunner(strict=True).on(["x"], Result(2, "", "nope"))
    with pytest.raises(CommandFailed, match="nope"):
        fr.run(["x"])
    with pytest.raises(AssertionError):
        fr.run(["y"])


def test_fake_runner_logs_redacted():
    fr = FakeRunner()
    fr.run(["tgtadm", "--password", Secret("zzzzzzzzzzzz")])
    assert "zzzzzzzzzzzz" not in fr.logged[0]
