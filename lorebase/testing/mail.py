"""The captured mail: a real SMTP server (aiosmtpd) on a free loopback port that keeps every
mail it receives, for a lorebase whose MAIL_URL points at it."""

from __future__ import annotations

import email
import re
from email import policy
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Any, Self

from aiosmtpd.controller import Controller

from .servers import free_port, wait_for


class _Keeper:
    """aiosmtpd's handler: each mail, parsed, appended to the sink's list."""

    def __init__(self, mails: list[EmailMessage]):
        self.mails = mails

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        self.mails.append(msg)
        return "250 OK"


class MailSink:
    """Every mail sent to smtp://127.0.0.1:<port>, in `mails`, in the order they came."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mails: list[EmailMessage] = []
        self.controller = Controller(_Keeper(self.mails), hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        """The MAIL_URL of a lorebase that sends here."""
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def to(self, address: str) -> list[EmailMessage]:
        """The mails to exactly `address` (case aside): `t_root@x` is not `inv_st_root@x`."""
        wanted = address.strip().lower()
        return [m for m in self.mails
                if wanted in {addr.lower() for _, addr in getaddresses([str(m["To"] or "")])}]

    def wait_for(self, address: str, subject: str = "", count: int = 1, timeout: float = 10.0) -> EmailMessage:
        """The `count`-th mail to `address` (with `subject` in its subject), once it arrives."""
        def found() -> EmailMessage | None:
            mails = [m for m in self.to(address) if subject.lower() in str(m["Subject"]).lower()]
            return mails[count - 1] if len(mails) >= count else None
        mail: EmailMessage = wait_for(found, timeout, 0.05, f"mail to {address} {subject!r}")
        return mail

    @staticmethod
    def text(mail: EmailMessage) -> str:
        """The plain-text part of a mail."""
        body = mail.get_body(preferencelist=("plain",))
        assert isinstance(body, EmailMessage), f"no plain-text part in {mail['Subject']!r}"
        return str(body.get_content())

    @classmethod
    def token(cls, mail: EmailMessage) -> str:
        """The token of the link in the mail's plain-text part."""
        match = re.search(r"[?&]token=([A-Za-z0-9_.\-]+)", cls.text(mail))
        assert match, f"no token link in mail: {cls.text(mail)!r}"
        return match.group(1)
