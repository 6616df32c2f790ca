#!/usr/bin/env python3
"""The import-direction check of ``make lint`` (ARCHITECTURE.md, "Import rules").

Owns the table of forbidden imports between the top-level packages and the
code that finds them: every ``import`` / ``from ... import`` statement (also
inside functions) of every module is read with :mod:`ast`, nothing is
imported or run. Prints one line per violation (file, line, the import, the
rule) and exits 1 if there is any. Usage: ``python tools/check_imports.py [ROOT]``.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

PACKAGES = ("provisiond", "pxe", "storage", "web")


@dataclass(frozen=True)
class Rule:
    files: str  # glob over paths relative to the root (fnmatch: '*' crosses '/')
    forbidden: tuple[str, ...]  # top-level names; "THIRD_PARTY" = anything not stdlib/own
    why: str
    allowed_in: tuple[str, ...] = ()  # files the rule exempts (the composition root)


RULES = (
    Rule("pxe/*", ("provisiond", "web", "storage"),
         "pxe declares the ports it needs (boot policy, lease store, name directory, settings); "
         "the core implements them"),
    Rule("storage/*", ("provisiond", "web", "pxe"),
         "storage imports only the standard library and its own types"),
    Rule("provisiond/*", ("web",),
         "web -> provisiond: only the composition root wires the web app in",
         allowed_in=("provisiond/app.py",)),
    Rule("pxe/*/codec.py", ("THIRD_PARTY", "provisiond", "pxe", "web", "storage"),
         "codecs import only the standard library"),
)  # fmt: skip


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    module: str
    rule: Rule

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: imports {self.module}: {self.rule.why}"


def imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import; relative imports are own-package."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def _forbidden(module: str, rule: Rule) -> bool:
    top = module.split(".")[0]
    if top in rule.forbidden:
        return True
    if "THIRD_PARTY" in rule.forbidden:
        return top not in sys.stdlib_module_names and top != "__future__"
    return False


def check(root: Path) -> list[Violation]:
    found = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            rules = [r for r in RULES if fnmatch(rel, r.files) and rel not in r.allowed_in]
            if not rules:
                continue
            tree = ast.parse(path.read_text(), filename=rel)
            for line, module in imported(tree):
                found += [Violation(rel, line, module, r) for r in rules if _forbidden(module, r)]
    return found


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1]
    violations = check(root)
    for v in violations:
        print(v)
    if violations:
        print(f"{len(violations)} import(s) against the rules of ARCHITECTURE.md", file=sys.stderr)
        return 1
    print("imports: every direction allowed (tools/check_imports.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
