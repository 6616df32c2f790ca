"""Storage: volume backends (file, reflink, lvm), iSCSI exporters (tgt, lio) and image import.

Owns everything that puts bytes on a storage host and makes them reachable over
iSCSI. ``storage.runner.Runner`` is the only place in this package that starts
subprocesses. Imports go one way: ``runner`` <- ``backends`` / ``exporters`` <-
``images``; nothing here imports ``web`` or ``pxe``.
"""
