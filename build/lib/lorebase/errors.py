"""Domain errors, and the one table that gives each its reply.

Identity and files say what went wrong in their own words; they know no HTTP. The chain
turns a domain error that reaches it into the ApiError this table names (`api_error`), so
every status and stable code a domain failure can produce is read here, in one place:

    DomainError                  status  code
    ├── Invalid(field)             400   validation (path: the field)
    ├── Taken(field)               409   the field: username or email
    ├── NoSuchFile                 404   notfound
    ├── SessionEnded               403   session
    ├── QuotaExceeded              409   quota
    ├── StorageFull                507   storage
    ├── FileServerDown             503   unavailable
    └── S3Down                     503   s3

`detail` says why, for notify and the operator's commands; it never reaches the client.
A route still raises ApiError itself for what is HTTP's alone (a missing cookie, a bad
CSRF token, a rate limit, a body too large).
"""

from __future__ import annotations

from .http import ApiError


class DomainError(Exception):
    """A failure in a domain's own terms. `field` names the input at fault, if one is."""

    def __init__(self, detail: str = "", field: str | None = None) -> None:
        super().__init__(detail or type(self).__name__)
        self.detail = detail
        self.field = field

    @property
    def code(self) -> str:
        """The stable code of its reply (for a log line; TABLE decides)."""
        return api_error(self).code


class Invalid(DomainError):
    """An input the domain refuses (a username's characters, an email's form, a file id)."""

    def __init__(self, field: str, detail: str = "") -> None:
        super().__init__(detail, field)


class Taken(DomainError):
    """A username or email another account holds."""

    def __init__(self, field: str, detail: str = "") -> None:
        super().__init__(detail, field)


class NoSuchFile(DomainError):
    """No file of that id (another user's is as absent as none)."""


class SessionEnded(DomainError):
    """The session a write was made for ended before the write landed (its user destroyed,
    disabled, reset): the write was refused or taken back."""


class QuotaExceeded(DomainError):
    """The user's files would no longer fit in QUOTA."""


class StorageFull(DomainError):
    """The disk holding the bytes refused them (full, a file size limit, read-only)."""


class FileServerDown(DomainError):
    """The file server did not answer (down, unreachable, too slow, or refusing this node)."""


class S3Down(DomainError):
    """S3 could not give back a file's copy (down, or the object missing)."""


_FIELD = ""  # the code is the error's field
TABLE: dict[type[DomainError], tuple[int, str]] = {
    Invalid: (400, "validation"),
    Taken: (409, _FIELD),
    NoSuchFile: (404, "notfound"),
    SessionEnded: (403, "session"),
    QuotaExceeded: (409, "quota"),
    StorageFull: (507, "storage"),
    FileServerDown: (503, "unavailable"),
    S3Down: (503, "s3"),
}


def api_error(error: DomainError) -> ApiError:
    """The reply a domain error stands for (a class missing from TABLE is a bug: 500 server)."""
    entry = next((TABLE[kind] for kind in TABLE if isinstance(error, kind)), None)
    if entry is None:
        return ApiError(500, "server", detail=repr(error))
    status, code = entry
    if code == _FIELD:
        return ApiError(status, error.field or "server", detail=error.detail)
    return ApiError(status, code, error.field if code == "validation" else None, detail=error.detail)
