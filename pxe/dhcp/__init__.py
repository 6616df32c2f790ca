"""DHCP for provisiond: full DHCP server and proxyDHCP for PXE/iPXE clients.

``codec`` is the pure wire format; ``bootfile`` decides firmware and boot
file; ``pool`` allocates addresses; ``leases`` keeps them durable with
group commits; ``handler`` turns one request into one reply (no sockets);
``server`` is the thin socket layer (:class:`pxe.dhcp.server.DhcpService`).
"""
