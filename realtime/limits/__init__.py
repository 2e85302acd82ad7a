"""Limits that keep one client from exhausting the server: request-body sizes (checked while
the body streams in), message rates per WebSocket, and attempts per client address.

All counting is per process (no shared state): with N processes behind a balancer a client
may get up to N times a per-address allowance.
"""
