"""What the bot says about its listeners at start: addresses as logged, and why one could not
listen, as one line naming the setting."""

from __future__ import annotations

import errno


def host_port(host: str, port: int) -> str:
    """host:port for a log line, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_error(setting: str, host: str, port: int, exc: OSError) -> str:
    """One line for a listener that could not start: the setting, the address, why."""
    if exc.errno == errno.EADDRINUSE:
        why = "already in use (another bot or program listens there)"
    elif exc.errno == errno.EACCES:
        why = "not allowed (ports below 1024 need privileges)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = "not an address of this machine"
    else:
        why = exc.strerror or str(exc)
    return f"{setting}={port}: cannot listen on {host}:{port}: {why}"
