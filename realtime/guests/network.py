"""Whether an exam offers guest accounts to an address, and now.

Where a request comes from is `realtime.proxies`' business (`X-Forwarded-For` is believed only
from `REALTIME_TRUSTED_PROXIES`); its address helpers are re-exported here.
"""

from __future__ import annotations

from realtime.proxies import (
    Address,
    Network,
    client_address,
    parse_networks,
    request_address,
    within,
)
from realtime.state.model import Exam

__all__ = ["Address", "Network", "client_address", "is_live", "parse_networks", "refusal",
           "request_address", "within"]


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
