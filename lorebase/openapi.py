"""The OpenAPI 3.1 document, made from the chain's routes and their schemas, so the
published contract and the validation are one thing (and outside tools can fuzz it)."""

from __future__ import annotations

from typing import Any

import msgspec

from .chain import Route

STATUS_TEXT = {200: "OK", 206: "Partial content (a Range request)", 304: "Not modified", 400: "Bad request",
               403: "Forbidden", 404: "Not found", 405: "Method not allowed", 408: "Body too slow", 409: "Conflict",
               413: "Too large",
               414: "URL too long", 415: "Wrong content type", 416: "Range not satisfiable",
               429: "Too many requests", 500: "Server error", 503: "Unavailable", 507: "Insufficient storage"}

ERROR = {"type": "object", "required": ["error"], "properties": {
    "error": {"type": "string"}, "path": {"type": "string"}, "message": {"type": "string"}}}


def _codes(route: Route) -> dict[int, list[str]]:
    codes: dict[int, list[str]] = {404: ["notfound"], 405: ["method"], 414: ["url"], 500: ["server"],
                                   503: ["redis"]}
    if route.accepts:
        codes.update({400: ["validation", "json"], 408: ["timeout"], 413: ["size"], 415: ["type"]})
    if route.query is not None:
        codes.setdefault(400, []).append("validation")
    if route.private:
        codes[403] = ["nocookie", "tampered", "session"] + (["csrf", "origin"] if route.method != "GET" else [])
    if route.section in ("admin",):
        codes.setdefault(403, []).append("admin")
    for status, names in route.replies.items():
        codes.setdefault(status, [])
        codes[status] += [n for n in names if n not in codes[status]]
    return codes


def document(routes: list[Route], title: str, version: str, csrf_field: bool = True) -> dict[str, Any]:
    endpoints = [r for r in routes if not r.is_step]
    types: list[Any] = []
    for route in endpoints:
        for t in (route.body, route.query, route.ok):
            if t is not None and t not in types:
                types.append(t)
    schemas, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    _ecma_patterns([schemas, components])
    by_type = dict(zip(types, schemas, strict=False))
    paths: dict[str, Any] = {}
    for route in endpoints:
        op: dict[str, Any] = {"summary": route.summary, "operationId": f"{route.method.lower()}{route.path}",
                              "tags": [route.section]}
        params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in (route.pattern.groupindex if route.pattern else {})]
        if route.query is not None:
            query_schema = components[by_type[route.query]["$ref"].rsplit("/", 1)[1]]
            required = set(query_schema.get("required", []))
            for name, prop in query_schema.get("properties", {}).items():
                params.append({"name": name, "in": "query", "required": name in required, "schema": prop})
        if route.private and route.method != "GET":
            params.append({"name": "X-CSRF-Token", "in": "header", "required": False, "schema": {"type": "string"},
                           "description": "the session's CSRF token, when it is not in the body's csrf field"})
        if params:
            op["parameters"] = params
        if route.body is not None:
            body_schema = by_type[route.body]
            if route.private and route.method != "GET" and csrf_field and "$ref" in body_schema:
                # the route's own schema plus the csrf field the chain takes out before the
                # handler: optional here, since the token may come in X-CSRF-Token instead
                own = components[body_schema["$ref"].rsplit("/", 1)[1]]
                body_schema = {**own, "properties": {**own.get("properties", {}), "csrf": {
                    "type": "string", "description": "the session's CSRF token (or the X-CSRF-Token header)"}}}
            media = "application/json" if route.accepts == "json" else "multipart/form-data"
            op["requestBody"] = {"required": True, "content": {media: {"schema": body_schema}}}
        if route.serves == "application/json":
            ok_schema = by_type[route.ok] if route.ok is not None else {"type": "object"}
        else:
            ok_schema = {"type": "string", "format": "binary"}
        responses: dict[str, Any] = {"200": {"description": "OK", "content": {route.serves: {"schema": ok_schema}}}}
        if route.method == "GET":
            responses["304"] = {"description": "Not modified (If-None-Match matched the ETag)"}
        for status, names in sorted(_codes(route).items()):
            if status < 400:  # another success, such as 206 for a Range request
                responses[str(status)] = {"description": STATUS_TEXT.get(status, ""),
                                          "content": {route.serves: {"schema": ok_schema}}}
                continue
            responses[str(status)] = {
                "description": f"{STATUS_TEXT.get(status, '')}: " + ", ".join(f"`{n}`" for n in names),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        paths.setdefault(route.path, {})[route.method.lower()] = op
        op["responses"] = responses
    components["Error"] = ERROR
    return {"openapi": "3.1.0", "info": {"title": title, "version": version},
            "paths": paths, "components": {"schemas": components}}


def _ecma_patterns(node: Any) -> None:
    """Python's end anchor `\\Z` as JSON Schema's `$` (where it means the very end)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                node[key] = value.replace("\\Z", "$")
            else:
                _ecma_patterns(value)
    elif isinstance(node, list):
        for item in node:
            _ecma_patterns(item)
