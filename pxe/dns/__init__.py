"""DNS service: wire guard (wire.py), decisions (resolver.py), sockets (server.py)."""
