"""Who is calling and over which scheme, believing forwarded headers only from trusted proxies.

`REALTIME_TRUSTED_PROXIES` is the only authority. `X-Forwarded-For` and `X-Forwarded-Proto`
count only when the direct peer is one of those proxies; the client is then the right-most
`X-Forwarded-For` hop that is not itself a trusted proxy. `realtime serve` runs uvicorn with
its own proxy-header handling off; plain uvicorn has it on and trusts 127.0.0.1 by default,
replacing the peer with an address from the header before the app sees it. Such an address
(a peer that is no trusted proxy yet appears in `X-Forwarded-For`) is not believed: the
client is then unknown, which no lab network contains, and a warning says how to fix the launch.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from starlette.requests import HTTPConnection

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(cidrs: Iterable[str]) -> list[Network]:
    """CIDR strings (a bare address is a /32 or /128); invalid entries raise ValueError."""
    return [ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip()]


@functools.lru_cache(maxsize=4096)
def parse_address(raw: str) -> Address | None:
    """An address from a peer or header value (ports and brackets stripped), or None.

    Memoised (addresses are immutable): every open and request parses its caller's address
    more than once (history, limits), and a hall's sockets come from a few thousand at most."""
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


@functools.lru_cache(maxsize=4096)
def _peer_host(peer: str) -> str:
    """`str(parse_address(peer))`, "" for none: the client's text when nothing is forwarded."""
    address = parse_address(peer) if peer else None
    return str(address) if address is not None else ""


def within(address: Address | None, networks: Sequence[Network]) -> bool:
    return address is not None and any(address in n for n in networks)


def _hops(forwarded_for: Sequence[str]) -> list[str]:
    return [h for value in forwarded_for for h in value.split(",") if h.strip()]


def client_address(
    peer: str, forwarded_for: Sequence[str], trusted: Sequence[Network]
) -> Address | None:
    """The client's address from the direct peer and the X-Forwarded-For header values."""
    current = parse_address(peer)
    if not within(current, trusted):
        return current
    for hop in reversed(_hops(forwarded_for)):
        address = parse_address(hop)
        if address is None:
            return current  # garbage in the chain: stop at the last address we trust
        current = address
        if not within(address, trusted):
            return address
    return current


def rewritten_by_server(peer: str, forwarded_for: Sequence[str],
                        trusted: Sequence[Network]) -> bool:
    """Whether the server (uvicorn's proxy headers) already took the peer from the header:
    a peer that is no trusted proxy of ours but is named in X-Forwarded-For."""
    address = parse_address(peer)
    if address is None or within(address, trusted):
        return False
    return any(parse_address(hop) == address for hop in _hops(forwarded_for))


def _peer(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client is not None else ""


def request_address(conn: HTTPConnection, trusted: Sequence[Network]) -> Address | None:
    """The caller's address; None when it cannot be known: no peer, or a peer the server
    took from X-Forwarded-For itself (`Proxies.client` is the same and warns once)."""
    peer = _peer(conn)
    if not peer:
        return None
    forwarded = conn.headers.getlist("x-forwarded-for")
    if forwarded and rewritten_by_server(peer, forwarded, trusted):
        return None
    return client_address(peer, forwarded, trusted)


@dataclass(slots=True)
class Proxies:
    """The trusted proxies of one app (`app.state.proxies`) and what they let us believe."""

    trusted: list[Network]
    warned: bool = False

    def client(self, conn: HTTPConnection) -> Address | None:
        """The caller's address, None when it cannot be known (see the module docstring)."""
        address = request_address(conn, self.trusted)
        if address is None and not self.warned and self._rewritten(conn):
            self.warned = True
            log.warning(
                "the server replaced the client address with one from X-Forwarded-For "
                "(uvicorn's proxy headers are on): ignored, such clients count as unknown. "
                "Run `realtime serve`, or uvicorn with --no-proxy-headers, and list your "
                "proxies in REALTIME_TRUSTED_PROXIES"
            )
        return address

    def _rewritten(self, conn: HTTPConnection) -> bool:
        peer = _peer(conn)
        if not peer:
            return False
        return rewritten_by_server(peer, conn.headers.getlist("x-forwarded-for"), self.trusted)

    def host(self, conn: HTTPConnection) -> str:
        """The caller's address as text ("" when unknown), for audit, history and limits."""
        if "x-forwarded-for" not in conn.headers:
            # The direct peer, whoever it is (nothing forwarded to believe or to have been
            # rewritten from): its text memoised, as every request asks (REST: its audit).
            return _peer_host(_peer(conn))
        address = self.client(conn)
        return str(address) if address is not None else ""

    def https(self, conn: HTTPConnection) -> bool:
        """Whether the browser reached us over HTTPS: directly, or through a trusted proxy
        that says so in X-Forwarded-Proto."""
        if conn.url.scheme in ("https", "wss"):
            return True
        if not within(parse_address(_peer(conn)), self.trusted):
            return False
        proto = conn.headers.getlist("x-forwarded-proto")
        return bool(proto) and proto[-1].split(",")[-1].strip().lower() in ("https", "wss")


def proxies_of(conn: HTTPConnection) -> Proxies:
    """The app's trusted proxies (none for a connection without an app, e.g. in tests)."""
    try:
        found = getattr(conn.app.state, "proxies", None)
    except (AttributeError, KeyError):
        found = None
    return found if isinstance(found, Proxies) else Proxies([])
