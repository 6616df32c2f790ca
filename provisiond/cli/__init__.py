"""The ``provisiond`` command line (click): ``provisiond.cli:main``.

The commands live in small modules by area (``daemon``, ``inventory``,
``work``, ``shell``) and register themselves on the one top-level group in
``base``; importing this package loads them all.
"""

from provisiond.cli import (  # noqa: F401  (registers commands)
    daemon,
    ha,
    inventory,
    power,
    shell,
    templates,
    work,
)
from provisiond.cli.base import main

__all__ = ["main"]
