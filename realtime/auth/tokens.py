"""Simple signed tokens: a staff token and a per-session candidate token.

Signed with the server's secret (itsdangerous), so any process sharing the secret accepts them.
A candidate token carries its session's token generation and its issue time; whether it still
opens the session (not revoked, not expired) is `realtime.auth.candidate_tokens`' rule.
"""

from __future__ import annotations

import hmac

from itsdangerous import BadSignature, URLSafeTimedSerializer

from realtime.auth.permissions import ALL_PERMISSIONS
from realtime.auth.principal import Principal


def same_secret(given: str, expected: str) -> bool:
    """Constant-time equality of two strings of any characters.

    `hmac.compare_digest` raises TypeError for a str that is not ASCII, and a header or a
    message can carry any character: compare the UTF-8 bytes instead.
    """
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                               expected.encode("utf-8", "surrogatepass"))


class TokenAuthenticator:
    def __init__(self, secret: str, staff_ttl: float, bootstrap_staff_token: str = "") -> None:
        self._staff = URLSafeTimedSerializer(secret, salt="realtime.staff")
        self._candidate = URLSafeTimedSerializer(secret, salt="realtime.candidate")
        self._staff_ttl = staff_ttl
        self._bootstrap = bootstrap_staff_token

    def issue_staff_token(self, name: str) -> str:
        return self._staff.dumps({"name": name})

    def issue_candidate_token(self, exam_id: str, session_id: str, generation: int = 0) -> str:
        return self._candidate.dumps({"exam": exam_id, "session": session_id,
                                      "gen": generation})

    async def staff(self, token: str) -> Principal | None:
        if self._bootstrap and same_secret(token, self._bootstrap):
            return Principal(id="admin", name="admin", kind="staff", permissions=ALL_PERMISSIONS)
        try:
            data = self._staff.loads(token, max_age=int(self._staff_ttl))
        except BadSignature:
            return None
        name = str(data.get("name", "staff"))
        return Principal(id=name, name=name, kind="staff", permissions=ALL_PERMISSIONS)

    async def candidate(self, token: str) -> Principal | None:
        try:
            data, issued = self._candidate.loads(token, return_timestamp=True)
        except BadSignature:
            return None
        if not isinstance(data, dict):
            return None
        session_id = str(data.get("session", ""))
        return Principal(
            id=session_id,
            name=session_id,
            kind="candidate",
            exam_id=str(data.get("exam", "")),
            session_id=session_id,
            extra={"token_gen": str(data.get("gen", 0)),
                   "issued_at": str(issued.timestamp())},
        )
