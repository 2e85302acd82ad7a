"""Ports for the tests' servers, chosen below the kernel's ephemeral port range.

A port found free by binding port 0 comes from the ephemeral range, where every outgoing
connection on the machine also gets its local port. Between that check and the server's own
bind (seconds, for a uvicorn process importing the app on a loaded machine) a connection may
take it, and the server cannot start: on the shared two-core machine, 1 in 2,000 such ports
was taken within 10 s, and a run starts a few hundred servers. Below the range a port is only
ever taken by an explicit bind.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 10_000  # above the ports services usually listen on (PostgreSQL, the system Redis)


def ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(offset: int = 0) -> int:
    """A port nobody listens on, below the ephemeral range; with `offset`, port + offset is
    such a port too (a Redis Cluster node also listens on its port + 10000)."""
    highest = ephemeral_start() - 1 - offset
    if highest <= LOWEST:
        raise RuntimeError(f"no room below the ephemeral range for ports {offset} apart")
    for _ in range(1000):
        port = random.randint(LOWEST, highest)
        if all(_bindable(p) for p in {port, port + offset}):
            return port
    raise RuntimeError("no free port below the ephemeral range")
