"""Passwords: argon2id with OWASP's parameters, hashed on a thread so the event loop keeps
serving while a hash runs; the list of the most common passwords, which are refused."""

from __future__ import annotations

import asyncio
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

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self.hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """True if `password` matches `stored`; with no stored hash, spends the same time."""
        return await asyncio.to_thread(self._verify, stored, password)

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
