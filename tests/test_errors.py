"""The domain errors' table (lorebase/errors.py): every domain error has its row, and each
row is the status and code the routes have always answered with (the routes' own tests
check them over HTTP; this holds the table whole)."""

from __future__ import annotations

import inspect

from lorebase import errors


def test_every_domain_error_has_its_row_in_the_table():
    kinds = {obj for _, obj in inspect.getmembers(errors, inspect.isclass)
             if issubclass(obj, errors.DomainError) and obj is not errors.DomainError}
    assert kinds == set(errors.TABLE)


def test_each_domain_error_replies_with_its_stable_status_and_code():
    replies = {name: (e.status, e.code, e.path) for name, e in {
        "invalid": errors.api_error(errors.Invalid("email")),
        "username": errors.api_error(errors.Taken("username")),
        "email": errors.api_error(errors.Taken("email")),
        "nosuchfile": errors.api_error(errors.NoSuchFile()),
        "ended": errors.api_error(errors.SessionEnded()),
        "quota": errors.api_error(errors.QuotaExceeded()),
        "full": errors.api_error(errors.StorageFull("disk full")),
        "fileserver": errors.api_error(errors.FileServerDown("refused")),
        "s3": errors.api_error(errors.S3Down()),
    }.items()}
    assert replies == {
        "invalid": (400, "validation", "email"), "username": (409, "username", None), "email": (409, "email", None),
        "nosuchfile": (404, "notfound", None), "ended": (403, "session", None), "quota": (409, "quota", None),
        "full": (507, "storage", None), "fileserver": (503, "unavailable", None), "s3": (503, "s3", None)}


def test_the_cause_stays_out_of_the_reply_body():
    reply = errors.api_error(errors.StorageFull("/var/lib/lorebase/files: No space left on device"))
    assert reply.body() == {"error": "storage"}
    assert reply.detail == "/var/lib/lorebase/files: No space left on device"
