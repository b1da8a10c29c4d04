"""Mail: the templates, the durable outbox in Redis, and the senders.

Routes never send: they push the mail onto `{mail}:queue` (a list of JSON mails) in Redis
and reply; its body (the links with one-time tokens) sealed (sealed.py, AES-256-GCM with a key
derived from COOKIE_SECRET, bound to the recipient), so Redis, its AOF and the backups never
hold a token readable. The tasks process takes each mail with LMOVE into `{mail}:sending`, sends it,
and removes it; a failure goes to the `{mail}:retry` sorted set (score: when to try again,
backoff doubling from 5 s to an hour), after 12 tries to `{mail}:dead`, each notified.
On start, mails left in `{mail}:sending` by a crash go back to the queue, so a restart
loses no mail (one may be sent twice: at least once, never zero times).

MAIL_URL: console:// (print to the log, for dev), smtp://[user:pass@]host:port[?starttls=1],
ses://region (Amazon SES v2, with boto3's credentials or S3_ACCESS_KEY/S3_SECRET_KEY).
"""

from __future__ import annotations

import base64
import json
import os
import smtplib
import sys
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from . import sealed
from .db import Client

# the outbox's four keys share the hash tag `{mail}`: a move between two of them is one step
# on a Redis Cluster too (tasks/queue.py)
QUEUE, SENDING, RETRY, DEAD = "{mail}:queue", "{mail}:sending", "{mail}:retry", "{mail}:dead"
WORKERS = "{mail}:workers"  # its senders (tasks/queue.py): each one's doing list is `{mail}:sending:<worker>`
MAX_TRIES = 12


PURPOSE = b"lorebase mail v1"


def message(secret: str, to: str, subject: str, text: str) -> str:
    """A queued mail (JSON), its body sealed with `secret` (COOKIE_SECRET)."""
    body = base64.b64encode(sealed.seal(secret, PURPOSE, to.encode(), text.encode())).decode()
    return json.dumps({"to": to, "subject": subject, "sealed": body, "t": int(time.time()), "tries": 0})


def body(secret: str, mail: dict[str, Any]) -> str:
    """A queued mail's text: its sealed body opened (sealed.Unsealed if it does not, e.g. queued
    before COOKIE_SECRET changed: it fails, retries and ends dead), or the clear text of a mail
    queued by a release before bodies were sealed."""
    if "sealed" not in mail:
        return str(mail["text"])
    return sealed.unseal(secret, PURPOSE, str(mail["to"]).encode(), base64.b64decode(mail["sealed"])).decode()


async def enqueue(db: Client, secret: str, to: str, subject: str, text: str) -> None:
    await db.call("LPUSH", QUEUE, message(secret, to, subject, text))


# -- templates --------------------------------------------------------------------------


def lasting(seconds: int) -> str:
    """How long a link works, in words: "24 hours", "one hour", "30 minutes", "7 days"."""
    if seconds < 60:
        return "one second" if seconds == 1 else f"{seconds} seconds"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if (seconds >= size and seconds % size == 0) or unit == "minute":
            count = max(1, round(seconds / size))
            if unit == "day" and count == 1:
                return "24 hours"
            return f"one {unit}" if count == 1 else f"{count} {unit}s"
    raise AssertionError("unreachable")


def verify_mail(base_url: str, username: str, token: str, ttl: int = 86400) -> tuple[str, str]:
    return ("Verify your email", f"""Hello,

Someone signed up as "{username}" with this email address. If that was you, open this
link and confirm with the password of "{username}" (or while logged in as it):

{base_url}/verify?token={token}

If it was not you, open the same link and choose "This was not me": the address is taken
away from "{username}" and stays free for you to sign up with. The link works once, for
{lasting(ttl)}; after that, an account that never verified this address no longer holds it.
""")


def change_mail(base_url: str, username: str, token: str, ttl: int = 86400) -> tuple[str, str]:
    return ("Verify your new email", f"""Hello,

The account "{username}" asked to use this email address from now on. If that was you,
open this link and confirm with the password of "{username}" (or while logged in as it):

{base_url}/verify?token={token}

Until then the account keeps its old address. If it was not you, ignore this mail: nothing
changes. The link works once, for {lasting(ttl)}.
""")


def change_notice_mail(username: str, new: str) -> tuple[str, str]:
    """To the old address: no link, so nothing in it can act on the account."""
    return ("Your email is being changed", f"""Hello {username},

Someone logged in as "{username}" asked to change the account's email from this address
to {new}. The change happens only once a link mailed to {new} is used; until then
this address stays the account's.

If this was not you, log in and change your password: the change needs your password, so
someone else knows it.
""")


def invite_mail(base_url: str, token: str, ttl: int) -> tuple[str, str]:
    days = max(1, round(ttl / 86400))
    return ("You are invited to lorebase", f"""Hello,

You are invited to sign up at {base_url} with this email address. Open this link and
choose a username and a password:

{base_url}/signup?invite={token}

The link works once, for {days} day{'s' if days != 1 else ''}, and only with this address. If you do not want an
account, ignore this mail.
""")


def reset_mail(base_url: str, username: str, token: str, ttl: int = 3600) -> tuple[str, str]:
    return ("Reset your password", f"""Hello {username},

Someone (hopefully you) asked to reset the password of your account. To choose a new
password, open this link:

{base_url}/reset?token={token}

The link works once, for {lasting(ttl)}. If you did not ask for it, ignore this mail: your
password stays as it is.
""")


def password_changed_mail(base_url: str, username: str) -> tuple[str, str]:
    return ("Your password was changed", f"""Hello {username},

The password of your account was just changed, and your other sessions were logged out.

If this was not you, reset your password at once: {base_url}/reset
""")


# -- senders ----------------------------------------------------------------------------


class Sender:
    def __init__(self, url: str, sender: str, config: Any):
        self.url = url
        self.sender = sender
        self.config = config
        parts = urlsplit(url)
        self.scheme = parts.scheme
        if self.scheme not in ("console", "smtp", "ses"):
            raise ValueError(f"MAIL_URL {url!r}: use console://, smtp://host:port or ses://region")
        self.parts = parts

    def build(self, mail: dict[str, Any], text: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = mail["to"]
        msg["Subject"] = mail["subject"]
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain="lorebase")
        msg.set_content(text)
        return msg

    def send(self, mail: dict[str, Any]) -> None:
        """Blocking; run it on a thread. Raises on failure."""
        text = body(self.config.COOKIE_SECRET, mail)
        if self.scheme == "console":
            shown = f"--- mail to {mail['to']}: {mail['subject']}\n{text}--- end of mail\n"
            os.write(sys.stdout.fileno(), shown.encode())
        elif self.scheme == "smtp":
            self._smtp(self.build(mail, text))
        else:
            self._ses(mail, text)

    def _smtp(self, msg: EmailMessage) -> None:
        p = self.parts
        query = parse_qs(p.query)
        with smtplib.SMTP(p.hostname or "127.0.0.1", p.port or 25, timeout=20) as smtp:
            if query.get("starttls", ["0"])[0] in ("1", "true", "yes"):
                smtp.starttls()
            if p.username:
                smtp.login(unquote(p.username), unquote(p.password or ""))
            smtp.send_message(msg)

    def _ses(self, mail: dict[str, Any], text: str) -> None:
        import boto3

        region = self.parts.hostname or "us-east-1"
        kwargs: dict[str, Any] = {"region_name": region}
        if self.config.S3_ACCESS_KEY:
            kwargs.update(aws_access_key_id=self.config.S3_ACCESS_KEY,
                          aws_secret_access_key=self.config.S3_SECRET_KEY)
        client = boto3.client("sesv2", **kwargs)
        client.send_email(FromEmailAddress=self.sender, Destination={"ToAddresses": [mail["to"]]},
                          Content={"Simple": {"Subject": {"Data": mail["subject"]},
                                              "Body": {"Text": {"Data": text}}}})
