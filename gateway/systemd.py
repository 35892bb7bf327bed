"""sd_notify(3) without libsystemd: the unit is Type=notify, so `systemctl start` and
`restart` return once the gateway listens and has checked its workers, not at exec."""

from __future__ import annotations

import contextlib
import os
import socket


def notify(state: str) -> None:
    """Sends e.g. "READY=1" to $NOTIFY_SOCKET; nothing outside systemd (no such variable)."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return
    if path.startswith("@"):  # an abstract socket
        path = "\0" + path[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(path)
        s.sendall(state.encode())
