"""lorebase: the backend of "How I write backends", in Python, as a framework you build on.

What an application needs, from one place (`from lorebase import Extension, Route, ...`):
the extension seam, the route and its chain sections, the request and the one reply
function, the one error type, schemas, and the types of the services a route reaches through
`req.app`. The names load on first use, so `import lorebase` (every command does) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .app import App
    from .chain import SECTIONS, Route
    from .config import Config
    from .extension import CheckContext, Extension, Queue, Scheduled, TaskContext, user_tag
    from .http import ApiError, Reply, Request, reply
    from .schema import Int, Schema, Text

# name → the module that defines it
_EXPORTS = {
    "App": "app",
    "Route": "chain", "SECTIONS": "chain",
    "Config": "config",
    "CheckContext": "extension", "Extension": "extension", "Queue": "extension", "Scheduled": "extension",
    "TaskContext": "extension", "user_tag": "extension",
    "ApiError": "http", "Reply": "http", "Request": "http", "reply": "http",
    "Schema": "schema", "Text": "schema", "Int": "schema",
}

__all__ = ["SECTIONS", "ApiError", "App", "CheckContext", "Config", "Extension", "Int", "Queue", "Reply", "Request",
           "Route", "Scheduled", "Schema", "TaskContext", "Text", "__version__", "reply", "user_tag"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lorebase' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value
