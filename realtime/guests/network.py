"""Where a guest request comes from, and whether an exam offers guest accounts there and now.

`X-Forwarded-For` is only believed when the direct peer is a configured trusted proxy; the
client is then the right-most address that is not itself a trusted proxy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from starlette.requests import HTTPConnection

from realtime.state.model import Exam

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(cidrs: Iterable[str]) -> list[Network]:
    """CIDR strings (a bare address is a /32 or /128); invalid entries raise ValueError."""
    return [ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip()]


def _address(raw: str) -> Address | None:
    raw = raw.strip().strip('"')
    if raw.startswith("[") and "]" in raw:  # [v6]:port
        raw = raw[1 : raw.index("]")]
    elif raw.count(":") == 1:  # v4:port
        raw = raw.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def within(address: Address | None, networks: Sequence[Network]) -> bool:
    return address is not None and any(address in n for n in networks)


def client_address(
    peer: str, forwarded_for: Sequence[str], trusted: Sequence[Network]
) -> Address | None:
    """The client's address from the direct peer and the X-Forwarded-For header values."""
    current = _address(peer)
    if not within(current, trusted):
        return current
    hops = [h for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            return current  # garbage in the chain: stop at the last address we trust
        current = address
        if not within(address, trusted):
            return address
    return current


def request_address(conn: HTTPConnection, trusted: Sequence[Network]) -> Address | None:
    peer = conn.client.host if conn.client is not None else ""
    return client_address(peer, conn.headers.getlist("x-forwarded-for"), trusted)


def is_live(exam: Exam, now: float) -> bool:
    """Within the exam's window (an open end counts as open)."""
    if exam.starts_at is not None and now < exam.starts_at:
        return False
    return not (exam.ends_at is not None and now >= exam.ends_at)


def refusal(exam: Exam, address: Address | None, now: float) -> str | None:
    """Why this exam offers no guest account to `address` now (None: it does)."""
    if not exam.settings.allow_guests:
        return "this exam does not allow guest accounts"
    if not is_live(exam, now):
        return "guest accounts are only offered while the exam is live"
    try:
        networks = parse_networks(exam.settings.lab_networks)
    except ValueError:
        networks = []
    if not within(address, networks):
        return "guest accounts are only offered in the exam's lab networks"
    return None
