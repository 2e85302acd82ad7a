"""The staff authenticator: login tokens from SQL, plus the bootstrap token for scripts.

A subclass of the simple `TokenAuthenticator`, so candidate tokens keep working unchanged and the
runtime's `auth` keeps its type. Legacy signed staff tokens (`realtime token NAME`) carry every
permission and cannot be revoked, so they are refused unless explicitly enabled.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from realtime.auth.permissions import ALL_PERMISSIONS
from realtime.auth.principal import Principal
from realtime.auth.tokens import TokenAuthenticator, same_secret
from realtime.errors import backend_down
from realtime.identity.service import IdentityService, token_id


class IdentityAuthenticator(TokenAuthenticator):
    def __init__(
        self,
        secret: str,
        staff_ttl: float,
        bootstrap_staff_token: str,
        identity: IdentityService,
        *,
        legacy_staff_tokens: bool = False,
        cache_ttl: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(secret, staff_ttl, bootstrap_staff_token)
        self.identity = identity
        self.legacy_staff_tokens = legacy_staff_tokens
        self.cache_ttl = cache_ttl
        self._monotonic = monotonic
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        # One object (frozen, never changed): `with_ip` then finds what it made for it.
        self._bootstrap_principal = Principal(
            id="admin", name="admin", kind="staff", permissions=ALL_PERMISSIONS,
            unrestricted=True,
        )

    def forget(self, token: str | None = None) -> None:
        """Drop cached lookups (of one token, or all): the next check reads SQL."""
        if token is None:
            self._cache.clear()
        else:
            self._cache.pop(token_id(token), None)

    async def staff(self, token: str) -> Principal | None:
        if not token:
            return None
        if self._bootstrap and same_secret(token, self._bootstrap):
            return self._bootstrap_principal
        if token.startswith("rt_"):
            key = token_id(token)
            now = self._monotonic()
            cached = self._cache.get(key)
            if cached is not None and now - cached[0] < self.cache_ttl:
                return cached[1]
            try:
                principal = await self.identity.principal(token)
            except Exception as exc:
                # SQL does not answer: staff who were signed in a moment ago stay signed in
                # (their last known answer), so an SQL outage does not lock proctors out.
                if cached is not None and backend_down(exc):
                    return cached[1]
                raise
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (now, principal)
            return principal
        if self.legacy_staff_tokens:
            return await super().staff(token)
        return None
