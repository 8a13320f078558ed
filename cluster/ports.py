"""TCP ports on this machine: is one free, and a default one unless another process holds it."""

from __future__ import annotations

import socket

__all__ = ["port_free", "preferred_port"]


def port_free(port: int) -> bool:
    """Can a listener bind ``port`` on every interface now?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def preferred_port(default: int) -> int:
    """``default`` when it is free, else a port the OS hands out as free."""
    if port_free(default):
        return default
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]
