"""bench/clone/firstwrite.py: run plan, the guest's console protocol, summary, ldd parsing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "clone"))

import firstwrite
from firstwrite import Result, Step


def test_plan_interleaves_and_rotates_the_kinds():
    got = firstwrite.plan(3)
    assert [s.kind for s in got] == [
        "classic", "thin", "plain",
        "thin", "plain", "classic",
        "plain", "classic", "thin",
    ]  # fmt: skip
    assert got[0] == Step("classic", 0, "fwc0") and got[-1] == Step("thin", 2, "fwt2")
    assert len({s.volume for s in got}) == 9  # every write goes into a fresh volume


CONSOLE = (
    "SeaBIOS ...\r\n"
    "FWBENCH guest up, kernel 6.1.0-57-amd64\r\n"
    "FWBENCH result kind=classic run=0 dev=sdb rc=0 start=100.250000000 end=102.750000000\r\n"
    "FWBENCH dd classic 0: 268435456 bytes (268 MB, 256 MiB) copied, 2.5 s, 107 MB/s\r\n"
    "FWBENCH result kind=thin run=0 dev=sdc rc=1 start=110.0 end=110.5\n"
    "noise FWBENCH result kind=plain run=0 dev=sdd rc=0 start=1 end=2\n"  # not at line start
    "FWBENCH result kind=bogus run=0 dev=sde rc=0 start=1 end=2\n"
    "FWBENCH result kind=plain run=0 dev=sdf rc=0 start=120.0 end=121.25\n"
    "FWBENCH result kind=plain run=1 dev=sdg rc=0 start=abc end=2\n"  # malformed
)


def test_parse_results_reads_only_well_formed_lines():
    got = firstwrite.parse_results(CONSOLE)
    assert got == [
        Result("classic", 0, "sdb", 0, pytest.approx(2.5)),
        Result("thin", 0, "sdc", 1, pytest.approx(0.5)),
        Result("plain", 0, "sdf", 0, pytest.approx(1.25)),
    ]


@pytest.mark.parametrize(
    ("results", "want"),
    [
        (
            [Result("classic", r, "sdb", 0, s) for r, s in enumerate((3.0, 2.0, 4.0))]
            + [Result("thin", r, "sdc", 0, s) for r, s in enumerate((1.5, 1.5, 2.5))]
            + [Result("plain", r, "sdd", 0, s) for r, s in enumerate((1.0, 1.0, 1.0))],
            [
                "classic snapshot       median   3000.0 ms  range 2000.0-4000.0 (n=3)",
                "thin snapshot          median   1500.0 ms  range 1500.0-2500.0 (n=3)",
                "plain LV (no snapshot) median   1000.0 ms  range 1000.0-1000.0 (n=3)",
                "first-write penalty classic: 3.00x a plain LV",
                "first-write penalty thin: 1.50x a plain LV",
                "classic / thin: 2.00x",
            ],
        ),
        (  # a failed write is not a time; no plain baseline, no ratio to it
            [Result("classic", 0, "sdb", 0, 2.0), Result("plain", 0, "sdd", 1, 0.1)],
            [
                "classic snapshot       median   2000.0 ms  range 2000.0-2000.0 (n=1)",
                "thin snapshot          no successful write",
                "plain LV (no snapshot) no successful write",
            ],
        ),
    ],
)
def test_summary(results, want):
    assert firstwrite.summary(results) == want


LDD = """\tlinux-vdso.so.1 (0x00007fd4fc4bf000)
\tlibcrypto.so.3 => /lib/x86_64-linux-gnu/libcrypto.so.3 (0x00007fd4fbe00000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fd4fbc1e000)
\tlibgone.so.1 => not found
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fd4fbc1e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007fd4fc4c1000)
"""


def test_ldd_paths():
    assert firstwrite.ldd_paths(LDD) == [
        "/lib/x86_64-linux-gnu/libcrypto.so.3",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
    ]
