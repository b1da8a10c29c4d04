"""Passwords: argon2id with OWASP's parameters, hashed on a thread so the event loop keeps
serving while a hash runs; the list of the most common passwords, which are refused."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from importlib import resources
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH = 8
MAX_LENGTH = 128


class Passwords:
    def __init__(self, config: Any):
        self.hasher = PasswordHasher(time_cost=config.ARGON2_TIME, memory_cost=config.ARGON2_MEMORY,
                                     parallelism=config.ARGON2_PARALLELISM)
        # verified against when the user does not exist, so both cases cost one hash (A2)
        self.dummy = self.hasher.hash("not the password of anyone")
        # hashes run on threads of their own, HASH_THREADS at a time: the event loop keeps
        # serving, a burst of logins cannot take more memory (ARGON2_MEMORY each) or cores than
        # that, and file reads on the default executor never queue behind them
        self.pool = ThreadPoolExecutor(max_workers=max(1, int(config.HASH_THREADS)), thread_name_prefix="argon2")

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def hash(self, password: str) -> str:
        return str(await self._run(self.hasher.hash, password))

    async def verify(self, stored: str | None, password: str) -> bool:
        """True if `password` matches `stored`; with no stored hash, spends the same time."""
        return bool(await self._run(self._verify, stored, password))

    def _verify(self, stored: str | None, password: str) -> bool:
        try:
            self.hasher.verify(stored or self.dummy, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return stored is not None

    def needs_rehash(self, stored: str) -> bool:
        return self.hasher.check_needs_rehash(stored)


@lru_cache(maxsize=1)
def _common() -> frozenset[str]:
    text = resources.files("lorebase").joinpath("data/common-passwords.txt").read_text()
    return frozenset(line.strip().lower() for line in text.splitlines() if line and not line.startswith("#"))


def is_common(password: str) -> bool:
    return password.lower() in _common()
