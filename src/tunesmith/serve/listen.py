"""The listening socket of `tunesmith serve` and `tunesmith ui`, bound before any slow work so a
taken port is a clean user error rather than a traceback after the model has loaded."""

from __future__ import annotations

import ipaddress
import socket

from tunesmith.errors import ServeError


def bind_socket(host: str, port: int, *, backlog: int = 2048) -> socket.socket:
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a host name
        family = socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                         hint="pick another --port, or stop the process using it") from None
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
