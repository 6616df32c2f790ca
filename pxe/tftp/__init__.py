"""TFTP service: pure codec (codec.py) and the event-loop server (server.py)."""
