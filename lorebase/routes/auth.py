"""The auth routes (seed: Routes), before the gatekeeper: signup, verifyEmail, login,
recover, reset. Rate limits per IP and per account are kept in Redis (lorebase.ratelimit)."""

from __future__ import annotations

from ..chain import Route
from ..http import ApiError, Reply, Request, reply
from ..identity import passwords, tokens, users
from ..mail import enqueue, reset_mail, verify_mail
from ..notify import notify
from ..ratelimit import check, hit, key, take_back
from ..schema import Schema, Text

HOUR = 3600
NO_STORE = {"cache-control": "no-store"}

Password = Text(1, passwords.MAX_LENGTH, description="8-128 characters, not a common password")
Login = Text(1, 254, description="username or email; trimmed and lower-cased")
Token = Text(1, 200)


class Signup(Schema):
    username: Text(1, 64, description="3-32 of [a-z0-9_.-] after trimming and lower-casing")  # type: ignore[valid-type]
    email: Text(3, 300)  # type: ignore[valid-type]
    password: Password  # type: ignore[valid-type]


class VerifyEmail(Schema):
    token: Token  # type: ignore[valid-type]


class LoginIn(Schema):
    username: Login  # type: ignore[valid-type]
    password: Password  # type: ignore[valid-type]


class Csrf(Schema):
    csrf: str


class Recover(Schema):
    username: Login  # type: ignore[valid-type]


class Reset(Schema):
    token: Token  # type: ignore[valid-type]
    password: Password  # type: ignore[valid-type]


def check_new_password(password: str, path: str) -> None:
    if len(password) < passwords.MIN_LENGTH or passwords.is_common(password):
        raise ApiError(400, "validation", path)


async def signup(req: Request) -> Reply:
    data: Signup = req.data
    config, db = req.app.config, req.app.db
    username = users.normal_username(data.username)
    email = users.normal_email(data.email)
    check_new_password(data.password, "password")
    if config.WHITELIST and email not in config.WHITELIST:
        raise ApiError(403, "whitelist")
    await check(db, "signup-ip", req.ip, config.SIGNUPS_PER_IP, HOUR)
    if await db.call("EXISTS", f"user:{username}"):
        raise ApiError(409, "username")
    if await db.call("EXISTS", f"email:{email}"):
        raise ApiError(409, "email")
    password_hash = await req.app.passwords.hash(data.password)
    await users.create(db, username, email, password_hash)
    token = await tokens.issue(db, "verify", username, email, config.VERIFY_TTL)
    await enqueue(db, email, *verify_mail(config.BASE_URL, username, token))
    notify("signup", user=username, ip=req.ip)
    return reply(200, {})


async def verify_email(req: Request) -> Reply:
    data: VerifyEmail = req.data
    db = req.app.db
    issued = await tokens.redeem(db, "verify", data.token)
    user = await users.get(db, issued[0]) if issued else None
    if issued is None or user is None or user["email"] != issued[1]:
        raise ApiError(403, "token")
    await db.call("HSET", f"user:{user['username']}", "verified", 1)
    return reply(200, {})


async def login(req: Request) -> Reply:
    data: LoginIn = req.data
    app = req.app
    config, db = app.config, app.db
    name = str(data.username).strip().lower()
    user = await users.find(db, name)
    # an account's failures count under its username, whichever name was typed (an
    # unknown name counts under itself)
    account = user["username"] if user else name
    ip_key, account_key = key("login-ip", req.ip), key("login-account", account)
    # every attempt is counted before its password is checked, so parallel guesses cannot
    # all slip under the limit; one refused, or whose password was right, is taken back
    ip_ok, ip_wait = await hit(db, "login-ip", req.ip, config.LOGIN_FAILS_PER_IP, config.LOGIN_WINDOW)
    account_ok, account_wait = await hit(db, "login-account", account, config.LOGIN_FAILS_PER_ACCOUNT,
                                         config.LOGIN_WINDOW)
    if not (ip_ok and account_ok):
        await take_back(db, ip_key, account_key)
        wait = max(ip_wait if not ip_ok else 0, account_wait if not account_ok else 0)
        raise ApiError(429, "rate", headers={"retry-after": str(wait)})
    ok = await app.passwords.verify(user["hash"] if user else None, data.password)
    if not ok or user is None or user.get("disabled") == "1":
        # the same reply whether the user exists or not, after the same work (A1, A2)
        raise ApiError(403, "auth")
    await take_back(db, ip_key, account_key)
    if config.REQUIRE_VERIFIED and user.get("verified") != "1":
        raise ApiError(403, "verify")
    username = user["username"]
    if app.passwords.needs_rehash(user["hash"]):
        await db.call("HSET", f"user:{username}", "hash", await app.passwords.hash(data.password))
    old = req.cookies.get(app.sessions.name)
    old_sid = app.sessions.unsign(old) if old else None
    if old_sid:  # a new id at every login: the one before stops working (S2)
        owner = await db.call("HGET", f"session:{old_sid}", "user")
        if owner:
            await app.sessions.delete(db, old_sid, owner)
    await db.call("DEL", account_key)
    sid, csrf = await app.sessions.create(db, username)
    await app.sessions.prune(db, username)
    return reply(200, {"csrf": csrf}, {"set-cookie": app.sessions.set_cookie(sid), **NO_STORE})


async def recover(req: Request) -> Reply:
    data: Recover = req.data
    config, db = req.app.config, req.app.db
    await check(db, "recover-ip", req.ip, config.RECOVER_PER_IP, HOUR)
    user = await users.find(db, str(data.username).strip().lower())
    if user is not None:
        # past the per-account limit the mail is silently not sent: the reply must not
        # tell whether the account exists
        allowed, _ = await hit(db, "recover-account", user["username"], config.RECOVER_MAILS_PER_ACCOUNT, HOUR)
        if allowed:
            token = await tokens.issue(db, "reset", user["username"], user["email"], config.RESET_TTL)
            await enqueue(db, user["email"], *reset_mail(config.BASE_URL, user["username"], token))
    return reply(200, {})


async def reset(req: Request) -> Reply:
    data: Reset = req.data
    app = req.app
    db = app.db
    check_new_password(data.password, "password")
    issued = await tokens.redeem(db, "reset", data.token)
    user = await users.get(db, issued[0]) if issued else None
    if issued is None or user is None or user["email"] != issued[1]:
        raise ApiError(403, "token")
    password_hash = await app.passwords.hash(data.password)
    await db.call("HSET", f"user:{user['username']}", "hash", password_hash, "verified", 1)
    await app.sessions.revoke_all(db, user["username"])
    notify("password reset", user=user["username"], ip=req.ip)
    return reply(200, {})


def routes() -> list[Route]:
    return [
        Route("POST", "/auth/signup", signup, section="auth", body=Signup,
              summary="Create an account; a verification mail is sent",
              replies={403: ["whitelist"], 409: ["username", "email"], 429: ["rate"]}),
        Route("POST", "/auth/verifyEmail", verify_email, section="auth", body=VerifyEmail,
              summary="Mark the email verified with the token from the mail", replies={403: ["token"]}),
        Route("POST", "/auth/login", login, section="auth", body=LoginIn,
              summary="Open a session: sets the cookie, returns the CSRF token",
              replies={403: ["auth", "verify"], 429: ["rate"]}),
        Route("POST", "/auth/recover", recover, section="auth", body=Recover,
              summary="Mail a reset link if the account exists (the reply is the same either way)",
              replies={429: ["rate"]}),
        Route("POST", "/auth/reset", reset, section="auth", body=Reset,
              summary="Set a new password with the token from the mail; ends all sessions",
              replies={403: ["token"]}),
    ]
