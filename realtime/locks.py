"""Per-key asyncio locks that clean up after themselves."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any


class KeyedLocks:
    """One asyncio.Lock per key, dropped when nobody holds or waits for it: changes a
    candidate's connections make to one session queue up here instead of racing in the store."""

    def __init__(self) -> None:
        self._locks: dict[Any, tuple[asyncio.Lock, int]] = {}

    def held(self, key: Any) -> bool:
        """Whether someone holds (or waits for) the key's lock."""
        return key in self._locks

    @contextlib.asynccontextmanager
    async def hold(self, key: Any, timeout: float | None = None) -> AsyncIterator[None]:
        """Hold the key's lock; TimeoutError if it was not free within `timeout` seconds."""
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            if timeout is None:
                await lock.acquire()
            else:
                async with asyncio.timeout(timeout):
                    await lock.acquire()
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
