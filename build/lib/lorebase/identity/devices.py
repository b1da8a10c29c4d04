"""Device cookies (OWASP "device cookies"): a browser that logged in to an account is
trusted for that account's later logins, so strangers' failures, which lock the account,
do not lock its owner out.

Every good login sets `<COOKIE_NAME>-device` (`__Host-` prefixed when cookies are Secure),
`<username>:<nonce>.<signature>`: a new nonce (128 random bits) each time, the signature an
HMAC-SHA256 of `<username>:<nonce>` under a key derived from COOKIE_SECRET (a key of its
own, so a device cookie's signature is never a valid session cookie's). HttpOnly,
SameSite=Lax, Path=/, Secure as the session cookie, kept by the browser DEVICE_TTL seconds.

A login that carries a valid device cookie of the account it names counts its attempt on
the device's own counter (`rate:login-device:<nonce>`, LOGIN_FAILS_PER_DEVICE per
LOGIN_WINDOW) instead of the account's: its own wrong passwords still lock it (then that
cookie gets 429 like a stranger). Nothing is stored for a device until it fails."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Any

from . import keys


class Devices:
    def __init__(self, config: Any):
        self.key = hmac.new(config.COOKIE_SECRET.encode(), b"lorebase device cookie", hashlib.sha256).digest()
        self.name = f"{config.cookie_name}-device"
        self.ttl = int(config.DEVICE_TTL)
        self.secure = "; Secure" if config.secure_cookies else ""

    def _sign(self, value: str) -> str:
        mac = hmac.new(self.key, value.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def issue(self, username: str) -> str:
        """The Set-Cookie value of a new device cookie for `username`."""
        value = f"{username}:{secrets.token_urlsafe(16)}"
        return (f"{self.name}={value}.{self._sign(value)}; Path=/; HttpOnly; SameSite=Lax; "
                f"Max-Age={self.ttl}{self.secure}")

    def nonce(self, cookie: str | None, username: str) -> str | None:
        """The nonce of `cookie` if it is a device cookie we signed for `username`, else None
        (absent, forged, of another account, or not of our form)."""
        if not cookie or len(cookie) > 200:
            return None
        value, dot, signature = cookie.rpartition(".")
        owner, colon, nonce = value.partition(":")
        if not dot or not colon or not nonce or owner != username or not keys.USERNAME.fullmatch(owner):
            return None
        if not hmac.compare_digest(signature.encode(), self._sign(value).encode()):
            return None
        return nonce
