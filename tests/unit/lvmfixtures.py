"""Recorded LVM command output (tests/unit/fixtures/storage/lvm-vm/): the file format.

Each fixture is one command's output, recorded on the test bed's storage VM
by tests/testbed/lvmrecord.py. A header of ``# key: value`` lines says where
and how (command, exit status, stream, lvm2 version, kernel); the output
follows byte for byte: stdout when the command succeeded, stderr when it
failed. Pure codec, no I/O beyond reading one file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from storage.runner import Result

DIR = Path(__file__).parent / "fixtures" / "storage" / "lvm-vm"


@dataclass(frozen=True)
class Recorded:
    header: dict[str, str]
    output: str

    @property
    def rc(self) -> int:
        return int(self.header["exit status"])

    def result(self) -> Result:
        """The runner result the recorded command gave (output on its recorded stream)."""
        if self.header["stream"] == "stdout":
            return Result(self.rc, self.output, "")
        return Result(self.rc, "", self.output)


def dumps(header: dict[str, str], output: str) -> str:
    lines = [f"# {k}: {v}" for k, v in header.items()]
    return "\n".join(lines) + "\n" + output


def loads(text: str) -> Recorded:
    header: dict[str, str] = {}
    rest = text
    while rest.startswith("# "):
        line, _, rest = rest.partition("\n")
        key, sep, value = line[2:].partition(": ")
        if not sep:
            raise ValueError(f"bad fixture header line {line!r}")
        header[key] = value
    for key in ("command", "exit status", "stream"):
        if key not in header:
            raise ValueError(f"fixture header lacks {key!r}")
    return Recorded(header, rest)


def load(name: str) -> Recorded:
    return loads((DIR / name).read_text())
