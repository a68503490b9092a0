"""Free TCP ports on the loopback interface."""

from __future__ import annotations

import socket

# Ports this process has handed out. The kernel may offer the same free port twice before
# the first taker binds it, and a stack given one port for two listeners fails to start
# ("Address already in use": a bench start failed so once, on a metrics port; whether
# this was its cause is not known, another process may also take a port meanwhile).
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, never one this process handed out before."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def is_listening(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0
