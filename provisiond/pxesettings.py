"""The protocol servers' settings, built from the daemon's configuration.

Owns the one mapping from :class:`provisiond.config.Config` to the plain
settings objects of :mod:`pxe.settings` (``pxe`` never reads ``Config``).
The composition root (:mod:`provisiond.app`) and the standalone runs
(:mod:`provisiond.standalone`) call these.
"""

from __future__ import annotations

from provisiond.config import Config, SubnetConfig
from pxe.settings import DhcpSettings, DnsSettings, SubnetSettings, TftpSettings


def subnet(s: SubnetConfig) -> SubnetSettings:
    return SubnetSettings(
        cidr=s.cidr, mode=s.mode, range_start=s.range_start, range_end=s.range_end,
        router=s.router, dns=tuple(s.dns), domain=s.domain, lease_time=s.lease_time,
    )  # fmt: skip


def dhcp(config: Config) -> DhcpSettings:
    return DhcpSettings(
        interface=config.interface,
        address=config.address,
        http_base=config.http_base,
        subnets=tuple(subnet(s) for s in config.subnets),
        port=config.services.dhcp_port,
        proxy_port=config.services.proxy_port,
    )


def tftp(config: Config) -> TftpSettings:
    return TftpSettings(
        address=config.address, root=config.boot_assets_dir, port=config.services.tftp_port
    )


def dns(config: Config) -> DnsSettings:
    d = config.dns
    return DnsSettings(
        address=config.address,
        domain=d.domain,
        port=config.services.dns_port,
        ttl=d.ttl,
        upstream=d.upstream,
        clients=(*(s.cidr for s in config.subnets), *d.allow),
        rate_limit=d.rate_limit,
        rate_limit_slip=d.rate_limit_slip,
        max_udp_size=d.max_udp_size,
    )
