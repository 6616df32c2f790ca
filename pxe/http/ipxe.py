"""iPXE scripts rendered from a BootSpec through Jinja2 templates.

Owns turning a :class:`pxe.boot.BootSpec` into the text of an iPXE
script (``templates/ipxe/*.ipxe.j2``, StrictUndefined). Everything that lands
in a script is validated first: kernel arguments, paths and iSCSI names may
not carry newlines, control characters, ``;``, ``&&``, ``||``, ``#`` words
or iPXE's own ``${`` expansion (:func:`pxe.boot.script_problem`, the
same rule the API and CLI apply at input time), so no input can inject a
second command into the script.
"""

from __future__ import annotations

import re
from pathlib import Path

import jinja2

from pxe.boot import BootAction, BootSpec, script_problem

_ARG = re.compile(r"^[\x21-\x7e]+$")  # printable, no spaces
_TEMPLATES = {
    BootAction.AGENT: "kernel.ipxe.j2",
    BootAction.DEPLOY: "kernel.ipxe.j2",
    BootAction.KERNEL: "kernel.ipxe.j2",
    BootAction.SANBOOT: "sanboot.ipxe.j2",
    BootAction.LOCAL_DISK: "localdisk.ipxe.j2",
}


class UnsafeScriptValue(ValueError):
    pass


def safe_text(value: str, what: str) -> str:
    problem = script_problem(value)
    if problem:
        raise UnsafeScriptValue(f"{what} {value!r} {problem}")
    return value


def safe_word(value: str, what: str) -> str:
    if not _ARG.match(value):
        raise UnsafeScriptValue(f"{what} {value!r} has spaces or control characters")
    return safe_text(value, what)


def safe_cmdline(cmdline: str) -> str:
    return " ".join(
        safe_word(w, "kernel argument") for w in safe_text(cmdline, "kernel command line").split()
    )


class IpxeRenderer:
    def __init__(self, templates_dir: Path, base_url: str) -> None:
        self.base = base_url.rstrip("/")
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(templates_dir / "ipxe")),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            autoescape=False,
        )

    def _render(self, name: str, mac: str, **ctx) -> str:
        return self._env.get_template(name).render(
            base=self.base, mac=mac, mac_dashes=mac.replace(":", "-"), **ctx
        )

    def render(self, spec: BootSpec | None, mac: str, extra_args: str = "") -> str:
        if spec is None:
            return self._render("ignore.ipxe.j2", mac)
        if spec.action in (BootAction.AGENT, BootAction.DEPLOY) and not spec.kernel:
            return self._render("nokernel.ipxe.j2", mac)
        if spec.action == BootAction.SANBOOT:
            san = spec.san
            if san is None:
                raise UnsafeScriptValue("SAN boot spec without a target")
            for value, what in (
                (san.iqn, "target IQN"),
                (san.initiator_iqn, "initiator IQN"),
                (san.portal, "portal"),
            ):
                safe_word(value, what)
            if san.chap_user:
                safe_word(san.chap_user, "CHAP user")
                safe_word(san.chap_secret, "CHAP secret")
            return self._render(_TEMPLATES[spec.action], mac, san=san)
        if spec.action == BootAction.LOCAL_DISK:
            return self._render(_TEMPLATES[spec.action], mac)
        kernel = self._asset(spec.kernel)
        initrds = [(self._asset(p), safe_word(Path(p).name, "initrd name")) for p in spec.initrds]
        return self._render(
            _TEMPLATES[spec.action],
            mac,
            label=safe_text(spec.label or str(spec.action), "boot label"),
            kernel_url=kernel,
            initrds=initrds,
            initrd_names=[name for _, name in initrds],
            cmdline=safe_cmdline(f"{spec.cmdline} {extra_args}"),
        )

    def _asset(self, path: str) -> str:
        """Relative asset paths are served from /assets/; absolute URLs pass through."""
        safe_word(path, "boot file path")
        if path.startswith(("http://", "https://")):
            return path
        if path.startswith("/") or ".." in Path(path).parts:
            raise UnsafeScriptValue(f"boot file path {path!r} must be relative to the assets dir")
        return f"{self.base}/assets/{path}"
