"""The database-backed boot policy (the first and, so far, only BootPolicy).

Owns the decision "what should this machine boot now?" for provisiond's own
inventory. It reads only the in-memory :class:`provisiond.inventory.Inventory`
snapshot, so DHCP and HTTP never wait on the database and nothing is written
here: discovery of unknown MACs happens when the HTTP script is served.

=====================================  ======================================
machine                                 BootSpec
=====================================  ======================================
unknown MAC / new / idle / offline /    AGENT: the idle-agent kernel + initrd
failed / releasing                      (the default Kernel)
appliance mode sanboot, starting/active SANBOOT: iSCSI target from params
appliance mode local, starting          DEPLOY: the agent, which streams
appliance mode local, active / written  LOCAL_DISK: boot the machine's disk
  (starting, the agent wrote the disk)
appliance mode template, installed /    LOCAL_DISK: boot the installed disk
  active
appliance mode template, starting,      KERNEL: the installer kernel + initrd
  installer set (preseed, kickstart..)  with the rendered answer-file URL
appliance mode template, starting       DEPLOY: the agent, which installs
  (FAI-style set)
=====================================  ======================================
"""

from __future__ import annotations

from provisiond import chapsecret, logs
from provisiond.config import Config
from provisiond.inventory import Inventory, KernelView, ResourceView
from provisiond.lifecycle import ApplianceState as AS
from provisiond.modes import ApplianceMode as M
from provisiond.secretbox import SecretBoxError
from pxe.boot import BootAction, BootSpec, Machine, SanTarget

log = logs.get("policy")


class DatabasePolicy:
    def __init__(self, config: Config, inventory: Inventory) -> None:
        self._config, self._inv = config, inventory

    def boot_spec(self, machine: Machine) -> BootSpec | None:
        view = self._inv.resource(machine.mac)
        app = view.appliance if view else None
        if app is not None and app.state in (AS.STARTING, AS.ACTIVE):
            spec = self._appliance_spec(view, app.mode, app.state, dict(app.params))
            if spec is not None:
                return spec
        return self._agent_spec(view)

    def _agent_spec(self, view: ResourceView | None) -> BootSpec:
        kernel: KernelView | None = self._inv.snapshot.default_kernel
        cmdline = self._config.agent.kernel_cmdline
        if kernel is None:
            return BootSpec(BootAction.AGENT, resource_id=view.id if view else None, label="agent")
        return BootSpec(
            BootAction.AGENT,
            kernel=kernel.kernel_path,
            initrds=(kernel.initrd_path,) if kernel.initrd_path else (),
            cmdline=" ".join(p for p in (cmdline, kernel.cmdline) if p),
            resource_id=view.id if view else None,
            label=f"idle agent ({kernel.name})",
        )

    def _appliance_spec(
        self, view: ResourceView, mode: str, state: str, params: dict
    ) -> BootSpec | None:
        if mode == M.SANBOOT and params.get("target_iqn"):
            try:  # sealed in the database; opened only for the script (chapsecret)
                secret = chapsecret.secret_of(self._config.state_dir, params) or ""
            except SecretBoxError as exc:
                log.error("SAN script of %s: its CHAP secret cannot be opened (%s); start "
                          "the appliance again", view.name, exc)  # fmt: skip
                return None
            san = SanTarget(
                portal=str(params.get("portal", self._config.address)),
                iqn=params["target_iqn"],
                lun=int(params.get("lun", 1)),
                initiator_iqn=params.get("initiator_iqn", ""),
                chap_user=params.get("chap_user", ""),
                chap_secret=secret,
            )
            return BootSpec(BootAction.SANBOOT, san=san, resource_id=view.id, label="sanboot")
        if mode == M.LOCAL and (state == AS.ACTIVE or params.get("written")):
            return BootSpec(BootAction.LOCAL_DISK, resource_id=view.id, label="local disk")
        if mode == M.LOCAL:
            spec = self._agent_spec(view)
            return BootSpec(
                BootAction.DEPLOY, spec.kernel, spec.initrds, spec.cmdline, None, view.id, "deploy"
            )
        if mode == M.TEMPLATE and (state == AS.ACTIVE or params.get("installed")):
            return BootSpec(BootAction.LOCAL_DISK, resource_id=view.id, label="installed disk")
        for key, label in (("install_", "installer"), ("", "install")):
            if mode == M.TEMPLATE and params.get(f"{key}kernel"):
                return BootSpec(
                    BootAction.KERNEL,
                    kernel=params[f"{key}kernel"],
                    initrds=tuple(params.get(f"{key}initrds", ())),
                    cmdline=params.get(f"{key}cmdline", ""),
                    resource_id=view.id,
                    label=label,
                )
        if mode == M.TEMPLATE:
            spec = self._agent_spec(view)
            return BootSpec(
                BootAction.DEPLOY, spec.kernel, spec.initrds, spec.cmdline, None, view.id, "install"
            )
        return None
