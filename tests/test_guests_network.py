"""Guest offers: client addresses behind trusted proxies, exam windows and lab networks."""

from __future__ import annotations

import ipaddress

import pytest

from realtime.guests.network import client_address, parse_networks, refusal
from realtime.guests.passwords import digest, entropy_bits, new_password, words
from realtime.state.model import Exam, ExamSettings

TRUSTED = parse_networks(["10.0.0.1/32", "10.0.1.0/24", "::1"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("192.168.5.5", ["1.2.3.4"], "192.168.5.5"),  # untrusted peer: header ignored
        ("10.0.0.1", [], "10.0.0.1"),  # a proxy without a header is the client
        ("10.0.0.1", ["1.2.3.4"], "1.2.3.4"),
        ("10.0.0.1", ["6.6.6.6, 1.2.3.4"], "1.2.3.4"),  # the right-most untrusted hop
        ("10.0.0.1", ["1.2.3.4, 10.0.1.7"], "1.2.3.4"),  # through two trusted proxies
        ("10.0.0.1", ["6.6.6.6", "1.2.3.4"], "1.2.3.4"),  # several header lines
        ("10.0.0.1", ["10.0.1.7"], "10.0.1.7"),  # all trusted: the left-most
        ("10.0.0.1", ["garbage, 1.2.3.4"], "1.2.3.4"),
        ("10.0.0.1", ["1.2.3.4, garbage"], "10.0.0.1"),  # stop at what cannot be parsed
        ("10.0.0.1", ["1.2.3.4:5555"], "1.2.3.4"),
        ("::1", ["[2001:db8::7]:443"], "2001:db8::7"),
        ("::ffff:10.0.0.1", ["1.2.3.4"], "1.2.3.4"),  # v4-mapped peer
        ("", ["1.2.3.4"], None),
    ],
)
def test_client_address(peer: str, forwarded: list[str], expected: str | None) -> None:
    found = client_address(peer, forwarded, TRUSTED)
    assert (str(found) if found is not None else None) == expected


def test_refusals() -> None:
    exam = Exam(id="e", title="E", starts_at=100.0, ends_at=200.0,
                settings=ExamSettings(allow_guests=True, lab_networks=["10.9.0.0/16"]))
    inside, outside = ipaddress.ip_address("10.9.3.4"), ipaddress.ip_address("10.8.3.4")
    assert refusal(exam, inside, 150.0) is None
    assert "lab networks" in (refusal(exam, outside, 150.0) or "")
    assert "live" in (refusal(exam, inside, 99.0) or "")
    assert "live" in (refusal(exam, inside, 200.0) or "")
    exam.settings.allow_guests = False
    assert "does not allow" in (refusal(exam, inside, 150.0) or "")
    exam.settings = ExamSettings(allow_guests=True, lab_networks=[])
    assert refusal(exam, inside, 150.0) is not None  # no lab network: offered nowhere


def test_passwords_are_four_short_words_of_over_40_bits() -> None:
    """Guest passwords: 4 common words of 3-5 lower-case letters, >= 40 bits, rarely alike."""
    assert entropy_bits() >= 40
    seen = set()
    for _ in range(200):
        password = new_password()
        parts = password.split("-")
        assert len(parts) == 4 and all(p in words() for p in parts)
        assert all(p.isascii() and p.isalpha() and p.islower() and 3 <= len(p) <= 5
                   for p in parts)
        seen.add(password)
    assert len(seen) == 200
    assert digest("k", 1, "mud-art-list-pace") != digest("k", 2, "mud-art-list-pace")
