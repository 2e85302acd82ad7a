"""Exams and sessions for the browser tests, made over REST."""

from __future__ import annotations

import uuid
from typing import Any

from clients import Api

FIRST = [
    "Amara",
    "Ben",
    "Chloé",
    "Dmitri",
    "Elif",
    "Farah",
    "Gustav",
    "Hana",
    "Ilya",
    "Jonas",
    "Kofi",
    "Lena",
    "Mateo",
    "Nadia",
    "Oskar",
    "Priya",
    "Quentin",
    "Rosa",
    "Sven",
    "Tariq",
    "Ula",
    "Viktor",
    "Wen",
    "Ximena",
    "Yusuf",
    "Zoe",
]
LAST = [
    "Okafor",
    "Schmidt",
    "Laurent",
    "Petrov",
    "Yılmaz",
    "Haddad",
    "Lindqvist",
    "Sato",
    "Novak",
    "Berg",
    "Mensah",
    "Fischer",
    "García",
    "Rahman",
    "Nilsen",
    "Iyer",
    "Moreau",
    "Costa",
    "Andersen",
    "Aziz",
    "Kowalski",
    "Horvath",
    "Li",
    "Ruiz",
    "Demir",
    "Walsh",
]


def person(i: int) -> str:
    """A varied, deterministic name (676 distinct ones, then they repeat)."""
    first = FIRST[i % len(FIRST)]
    last = LAST[(i * 7 + i // len(FIRST)) % len(LAST)]
    return f"{first} {last}"


async def make_exam(
    api: Api,
    count: int,
    groups: list[str] | None = None,
    title: str | None = None,
    **fields: Any,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An exam with `count` sessions (groups assigned round robin); returns (exam, sessions)."""
    exam = await api.create_exam(
        id=f"b-{uuid.uuid4().hex[:10]}",
        title=title or "Browser test exam",
        groups=groups or [],
        **fields,
    )
    candidates = [
        {
            "candidate_id": f"S{10000 + i}",
            "name": person(i),
            **({"group": groups[i % len(groups)]} if groups else {}),
        }
        for i in range(count)
    ]
    response = await api.http.post(
        f"/api/v1/exams/{exam['id']}/sessions", json={"candidates": candidates}
    )
    assert response.status_code == 201, response.text
    sessions: list[dict[str, Any]] = response.json()["sessions"]
    return exam, sessions
