"""tools/check_imports.py: the import directions of ARCHITECTURE.md hold, and the check bites.

Table-driven over the forbidden directions: each row writes one module with
one import into a scratch tree and expects the check to report it (or not);
the last test runs the check over this repository.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("check_imports", REPO / "tools" / "check_imports.py")
check_imports = importlib.util.module_from_spec(_spec)
sys.modules["check_imports"] = check_imports  # dataclasses look their module up
_spec.loader.exec_module(check_imports)

# (file, source, reported?)
CASES = [
    ("pxe/dhcp/server.py", "from provisiond.config import Config\n", True),
    ("pxe/dns/server.py", "import provisiond.logs\n", True),
    ("pxe/tftp/server.py", "def f():\n    from provisiond import logs\n", True),  # in a function
    ("pxe/http/ipxe.py", "from web import create_app\n", True),
    ("pxe/dhcp/server.py", "from storage.runner import Runner\n", True),
    ("pxe/dhcp/server.py", "from pxe.boot import BootPolicy\n", False),
    ("pxe/dhcp/server.py", "from . import codec\n", False),  # relative: own package
    ("storage/runner.py", "from provisiond import logs\n", True),
    ("storage/backends/lvm.py", "from web.api import common\n", True),
    ("storage/exporters/tgt.py", "from pxe.boot import SanTarget\n", True),
    ("storage/backends/lvm.py", "from storage.runner import Runner\n", False),
    ("provisiond/jobs.py", "from web.api.common import ctx\n", True),
    ("provisiond/app.py", "from web import create_app\n", False),  # the composition root
    ("provisiond/policy.py", "from pxe.boot import BootSpec\n", False),  # core implements ports
    ("provisiond/images.py", "from storage.backends import base\n", False),
    ("pxe/dhcp/codec.py", "import struct\nfrom dataclasses import dataclass\n", False),
    ("pxe/dhcp/codec.py", "import scapy.all\n", True),  # third party in a codec
    ("pxe/tftp/codec.py", "from pxe.boot import Machine\n", True),
    ("web/boot.py", "from pxe.boot import normalize_mac\n", False),
]


@pytest.mark.parametrize(("path", "source", "reported"), CASES,
                         ids=[f"{c[0]}:{c[1].split()[1]}" for c in CASES])  # fmt: skip
def test_rule_table(tmp_path, path, source, reported):
    f = tmp_path / path
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(source)
    found = check_imports.check(tmp_path)
    assert bool(found) == reported, [str(v) for v in found]
    if reported:
        assert all(v.path == path for v in found)
        assert str(found[0]).startswith(f"{path}:")


def test_main_exits_1_and_names_the_import(tmp_path, capsys):
    (tmp_path / "pxe").mkdir()
    (tmp_path / "pxe" / "x.py").write_text("import os\n\nfrom provisiond.db import Database\n")
    assert check_imports.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "pxe/x.py:3: imports provisiond.db" in out


def test_this_repository_keeps_the_directions():
    assert [str(v) for v in check_imports.check(REPO)] == []
