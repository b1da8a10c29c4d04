"""The records a route reads about who is asking: the session the gatekeeper loaded
(`Request.session`) and the user record behind it (`Request.user`, `users.get`).

They are TypedDicts: at run time the plain dicts Redis replies are turned into, so typing
them costs a request nothing. Every field of a user record is a string, as Redis keeps it
(flags are "1" or "0", times are digits).
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


class Session(TypedDict):
    """A live session (`Sessions.load`): its id `<user>:<random>`, its user, its CSRF token."""

    id: str
    user: str
    csrf: str
    csrf_in_body: NotRequired[bool]  # set by the CSRF step for an upload, whose token is a form field


class Profile(TypedDict):
    """What a listing of users reads of each record (`users.search`), and all a reply may show."""

    username: str
    email: str  # "" once the address was released or taken over
    created: str  # unix seconds
    verified: str  # "1" or "0", as are admin and disabled
    admin: str
    disabled: str


class User(Profile):
    """A whole user record, `user:{<username>}` (identity/users.py)."""

    hash: str  # the argon2id hash of the password
    gen: str  # the generation its sessions must carry (identity/sessions.py)
    last: NotRequired[str]  # unix ms of the last login
    destroying: NotRequired[str]  # unix ms: a destroy began and has not finished
