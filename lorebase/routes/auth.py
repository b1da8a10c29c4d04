"""The auth routes (seed: Routes), before the gatekeeper: signup, verifyEmail (of a signup's
address or of an email change), resend a verification, login, releaseEmail, recover, reset.
Rate limits per IP and per account are kept in Redis (lorebase.ratelimit)."""

from __future__ import annotations

from typing import Annotated

from ..chain import Route
from ..errors import Taken
from ..http import ApiError, Reply, Request, reply
from ..identity import invites, keys, passwords, tokens, users
from ..identity.records import User
from ..mail import enqueue, reset_mail, verify_mail
from ..notify import notify
from ..ratelimit import address, check, clear, hit, key, refused, take_back
from ..schema import Schema, Text

HOUR = 3600
# every auth body is a few short fields (a password is at most 128 characters, 12 bytes
# each as a JSON escape): 4 KiB holds the largest, and bounds what an anonymous client
# can make the server parse
LIMIT = 4096
NO_STORE = {"cache-control": "no-store"}
# where a form has no username field, "wrong username or password" would mislead
WRONG_PASSWORD = "Wrong password."  # noqa: S105 (a message, not a password)

Password = Annotated[str, Text(1, passwords.MAX_LENGTH, description="8-128 characters, not a common password")]
Login = Annotated[str, Text(1, 254, description="username or email; trimmed and lower-cased")]
Token = Annotated[str, Text(1, 200)]


class Signup(Schema):
    username: Annotated[str, Text(1, 64, description="3-32 of [a-z0-9_.-] after trimming and lower-casing")]
    email: Annotated[str, Text(3, 300)]
    password: Password
    invite: Annotated[str, Text(0, 500, description="the token of an invite mail, for its email only")] = ""


class VerifyEmail(Schema):
    token: Token
    password: Password | None = None


class ReleaseEmail(Schema):
    token: Token


class LoginIn(Schema):
    username: Login
    password: Password


class Csrf(Schema):
    csrf: str


class Recover(Schema):
    username: Login


class Resend(Schema):
    username: Login


class Reset(Schema):
    token: Token
    password: Password


def check_new_password(password: str, path: str) -> None:
    if len(password) < passwords.MIN_LENGTH or passwords.is_common(password):
        raise ApiError(400, "validation", path)


async def signup(req: Request) -> Reply:
    data = req.payload(Signup)
    config, db = req.app.config, req.app.db
    username = users.normal_username(data.username)
    email = users.normal_email(data.email)
    check_new_password(data.password, "password")
    if data.invite and invites.email_of(data.invite) != email:
        raise ApiError(403, "invite")  # a token for another address (or none of ours)
    if not data.invite and config.WHITELIST and email not in config.WHITELIST:
        raise ApiError(403, "whitelist")
    await check(db, "signup-ip", address(req.ip), config.SIGNUPS_PER_IP, HOUR)
    refused = await users.taken(db, username, email, config.VERIFY_TTL)
    if refused:  # before the hash: a taken name costs no argon2
        raise Taken(refused)
    password_hash = await req.app.passwords.hash(data.password)
    invited = await invites.take(db, data.invite, email) if data.invite else None
    if data.invite and invited is None:
        raise ApiError(403, "invite")  # used, revoked, expired or replaced
    try:
        previous = await users.create(db, username, email, password_hash, config.VERIFY_TTL)
    except Taken:
        if invited:
            await invites.give_back(db, email, invited)  # the name was taken meanwhile: the invite still works
        raise
    if previous:
        notify("email taken over", user=username, previous=previous, ip=req.ip)
    if invited:  # the invite's mail proved the mailbox
        await users.set_flag(db, username, "verified", True)
    else:
        token = await tokens.issue(db, "verify", username, email, config.VERIFY_TTL)
        await enqueue(db, config.COOKIE_SECRET, email,
                      *verify_mail(config.BASE_URL, username, token, config.VERIFY_TTL))
    notify("signup", user=username, ip=req.ip, invited=bool(invited))
    req.app.stats.flow("signups")
    return reply(200, {})


async def _token_user(req: Request, kind: str, token: str) -> User:
    """The user a live token was issued for, its email unchanged since; else 403 token."""
    issued = await tokens.peek(req.app.db, kind, token)
    user = await users.get(req.app.db, issued[0]) if issued else None
    if issued is None or user is None or user["email"] != issued[1]:
        raise ApiError(403, "token")
    return user


async def _count_attempt(req: Request, account: str) -> tuple[str, str]:
    """One password attempt counted against the login limits, per address and per account
    (or, from a browser holding a device cookie of the account, per device instead: the
    owner is not locked out by strangers' failures), before its hash runs (parallel guesses
    cannot all slip under the limit); 429 rate past either. The two counters' keys, for
    `take_back` once the password proved right."""
    config, db = req.app.config, req.app.db
    ip = address(req.ip)
    device = req.app.devices.nonce(req.cookies.get(req.app.devices.name), account)
    if device is None:
        name, subject, limit = "login-account", account, config.LOGIN_FAILS_PER_ACCOUNT
    else:
        name, subject, limit = "login-device", device, config.LOGIN_FAILS_PER_DEVICE
    ip_key, account_key = key("login-ip", ip), key(name, subject)
    ip_ok, ip_wait = await hit(db, "login-ip", ip, config.LOGIN_FAILS_PER_IP, config.LOGIN_WINDOW)
    account_ok, account_wait = await hit(db, name, subject, limit, config.LOGIN_WINDOW)
    if not (ip_ok and account_ok):
        await take_back(db, ip_key, account_key)
        wait = max(ip_wait if not ip_ok else 0, account_wait if not account_ok else 0)
        # a security event (the audit stream, sampled per kind past AUDIT_ANONYMOUS_RATE)
        notify("lockout", user=account, by="address" if not ip_ok else name.removeprefix("login-"), ip=req.ip,
               retry_s=wait)
        raise refused(wait)
    return ip_key, account_key


async def _password_proof(req: Request, user: User, password: str) -> bool:
    """The account's password, under the login limits (each try costs a hash)."""
    counters = await _count_attempt(req, user["username"])
    if not await req.app.passwords.verify(user["hash"], password):
        return False
    await take_back(req.app.db, *counters)
    return True


async def _session_of(req: Request, username: str) -> bool:
    """The request carries a live session of `username`."""
    sessions = req.app.sessions
    value = req.cookies.get(sessions.name)
    sid = sessions.unsign(value) if value else None
    return sid is not None and keys.session_owner(sid) == username and \
        await sessions.load(req.app.db, sid) is not None


async def _change_user(req: Request, token: str) -> tuple[User, str, str] | None:
    """The user a live email-change token was issued for, of the same generation still, the
    new address and the token's stored value; None if it is no change token; else 403 token."""
    issued = await tokens.peek(req.app.db, "change", token)
    if issued is None:
        return None
    user = await users.get(req.app.db, issued[0])
    if user is None or user.get("gen", "") != issued[2]:
        raise ApiError(403, "token")
    return user, issued[1], tokens.stored(token, issued[1], issued[2])


async def verify_email(req: Request) -> Reply:
    """The token proves the mailbox; a live session of the account or its password proves
    the account. Both are needed, so nobody's click verifies an account someone else made.
    The token is a signup's (the account's address verified) or an email change's (the new
    address becomes the account's). Proved with the password, the reply logs the browser in
    as `/auth/login` does."""
    data = req.payload(VerifyEmail)
    db = req.app.db
    change = await _change_user(req, data.token)
    user = change[0] if change else await _token_user(req, "verify", data.token)
    by_password = False
    if not await _session_of(req, user["username"]):
        if data.password is None:
            raise ApiError(403, "auth", message="Log in as the account, or give its password.")
        if not await _password_proof(req, user, data.password):
            raise ApiError(403, "auth", message=WRONG_PASSWORD)
        by_password = True
    if change:
        changed = await users.change_email(db, user["username"], change[2], change[1], req.app.config.VERIFY_TTL)
        if changed is None:
            raise ApiError(403, "token")
        if changed[1]:
            notify("email taken over", user=user["username"], previous=changed[1], ip=req.ip)
        notify("email changed", user=user["username"], ip=req.ip)
    else:
        if not await users.verify(db, data.token, user["email"]):
            raise ApiError(403, "token")
        notify("email verified", user=user["username"], ip=req.ip)
    if by_password:
        fresh = await users.get(db, user["username"])
        if fresh is not None and fresh.get("disabled") != "1":
            return await _log_in(req, fresh, data.password or "", key("login-account", user["username"]))
    return reply(200, {})


async def release_email(req: Request) -> Reply:
    """"This was not me": the mailbox owner takes the address back from the account that
    signed up with it, which keeps everything else; the address is free to sign up with."""
    data = req.payload(ReleaseEmail)
    db = req.app.db
    issued = await tokens.redeem(db, "verify", data.token)
    if issued is None or not await users.release(db, issued[0], issued[1]):
        raise ApiError(403, "token")
    notify("email released", user=issued[0], ip=req.ip)
    return reply(200, {})


async def login(req: Request) -> Reply:
    data = req.payload(LoginIn)
    app = req.app
    config, db = app.config, app.db
    name = str(data.username).strip().lower()
    user = await users.find(db, name)
    # an account's failures count under its username, whichever name was typed (an
    # unknown name counts under itself)
    ip_key, account_key = await _count_attempt(req, user["username"] if user else name)
    ok = await app.passwords.verify(user["hash"] if user else None, data.password)
    if not ok or user is None or user.get("disabled") == "1":
        # the same reply whether the user exists or not, after the same work (A1, A2)
        app.stats.flow("login_failures")
        raise ApiError(403, "auth")
    await take_back(db, ip_key, account_key)
    if config.REQUIRE_VERIFIED and user.get("verified") != "1":
        raise ApiError(403, "verify")
    return await _log_in(req, user, data.password, account_key)


async def _log_in(req: Request, user: User, password: str, account_key: str) -> Reply:
    """A new session of `user`, whose `password` was just checked: the cookie set, the CSRF
    token in the reply (what login answers)."""
    app = req.app
    db = app.db
    rehash = await app.passwords.hash(password) if app.passwords.needs_rehash(user["hash"]) else ""
    old = req.cookies.get(app.sessions.name)
    old_sid = app.sessions.unsign(old) if old else None
    old_owner = keys.session_owner(old_sid) if old_sid else None
    if old_sid and old_owner:  # a new id at every login: the one before stops working (S2)
        await app.sessions.delete(db, old_sid, old_owner)
    await clear(db, account_key)  # the account's failures, or the device's
    # made only if the user is still the one whose password was checked: not destroyed,
    # disabled, reset or changed meanwhile (else the same reply as a wrong password)
    made = await app.sessions.create(db, user, rehash, req.ip, req.headers.get("user-agent", ""))
    if made is None:
        raise ApiError(403, "auth")
    sid, csrf = made
    await app.sessions.prune(db, user["username"])
    app.stats.flow("logins")
    notify("login", user=user["username"], ip=req.ip)
    return reply(200, {"csrf": csrf}, {"set-cookie": app.sessions.set_cookie(sid), **NO_STORE},
                 cookies=(app.devices.issue(user["username"]),))


async def recover(req: Request) -> Reply:
    data = req.payload(Recover)
    config, db = req.app.config, req.app.db
    await check(db, "recover-ip", address(req.ip), config.RECOVER_PER_IP, HOUR)
    user = await users.find(db, str(data.username).strip().lower())
    if user is not None:
        # past the per-account limit the mail is silently not sent: the reply must not
        # tell whether the account exists
        allowed, _ = await hit(db, "recover-account", user["username"], config.RECOVER_MAILS_PER_ACCOUNT, HOUR)
        if allowed:
            token = await tokens.issue(db, "reset", user["username"], user["email"], config.RESET_TTL,
                                       user.get("gen", ""))
            await enqueue(db, config.COOKIE_SECRET, user["email"],
                          *reset_mail(config.BASE_URL, user["username"], token, config.RESET_TTL))
    return reply(200, {})


async def resend(req: Request) -> Reply:
    """A new verification mail to an account that has not verified its address (the new
    token replaces the last); limited as recover is, and the same reply either way."""
    data = req.payload(Resend)
    config, db = req.app.config, req.app.db
    await check(db, "resend-ip", address(req.ip), config.RECOVER_PER_IP, HOUR)
    user = await users.find(db, str(data.username).strip().lower())
    if user is not None and user.get("verified") != "1" and user.get("email") and user.get("disabled") != "1":
        allowed, _ = await hit(db, "resend-account", user["username"], config.RECOVER_MAILS_PER_ACCOUNT, HOUR)
        if allowed:
            token = await tokens.issue(db, "verify", user["username"], user["email"], config.VERIFY_TTL)
            await enqueue(db, config.COOKIE_SECRET, user["email"],
                          *verify_mail(config.BASE_URL, user["username"], token, config.VERIFY_TTL))
            notify("verification resent", user=user["username"], ip=req.ip)
    return reply(200, {})


async def reset(req: Request) -> Reply:
    data = req.payload(Reset)
    app = req.app
    db = app.db
    check_new_password(data.password, "password")
    issued = await tokens.redeem(db, "reset", data.token)
    user = await users.get(db, issued[0]) if issued else None
    # the token's user, with the email and the generation it was issued for: a token that
    # a password change, disable or destroy overtook is dead even if it was mailed after
    if issued is None or user is None or user["email"] != issued[1] or user.get("gen", "") != issued[2]:
        raise ApiError(403, "token")
    password_hash = await app.passwords.hash(data.password)
    if await users.set_password(db, app.sessions, user["username"], password_hash, verified=True) < 0:
        raise ApiError(403, "token")
    await clear(db, key("login-account", user["username"]))  # the mailbox's owner: no longer locked out
    notify("password reset", user=user["username"], ip=req.ip)
    return reply(200, {})


def routes() -> list[Route]:
    return [
        Route("POST", "/auth/signup", signup, section="auth", body=Signup, limit=LIMIT,
              summary="Create an account; a verification mail is sent",
              replies={403: ["whitelist", "invite"], 409: ["username", "email"], 429: ["rate"]}),
        Route("POST", "/auth/verifyEmail", verify_email, section="auth", body=VerifyEmail, limit=LIMIT,
              summary="Verify the address of a signup or an email change: the token from the mail, "
                      "and a live session of the account or its password (with the password, the "
                      "reply logs in as /auth/login does)",
              replies={403: ["token", "auth"], 409: ["email"], 429: ["rate"]}),
        Route("POST", "/auth/verify/resend", resend, section="auth", body=Resend, limit=LIMIT,
              summary="Mail a new verification link if the account exists and is unverified "
                      "(the reply is the same either way)", replies={429: ["rate"]}),
        Route("POST", "/auth/releaseEmail", release_email, section="auth", body=ReleaseEmail, limit=LIMIT,
              summary="'This was not me': the token from the verification mail takes the address "
                      "back from the account that signed up with it", replies={403: ["token"]}),
        Route("POST", "/auth/login", login, section="auth", body=LoginIn, limit=LIMIT,
              summary="Open a session: sets the cookie, returns the CSRF token",
              replies={403: ["auth", "verify"], 429: ["rate"]}),
        Route("POST", "/auth/recover", recover, section="auth", body=Recover, limit=LIMIT,
              summary="Mail a reset link if the account exists (the reply is the same either way)",
              replies={429: ["rate"]}),
        Route("POST", "/auth/reset", reset, section="auth", body=Reset, limit=LIMIT,
              summary="Set a new password with the token from the mail; ends all sessions",
              replies={403: ["token"]}),
    ]
