"""GET /openapi.json: an OpenAPI 3.1 document made from the same schemas the chain
validates with, listing every route with its request schema and reply codes. Checked
against the running server: what the document says is what the server does."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx
import pytest

from .lore import ROOT
from .support import assert_error, client_ip, post_json

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@pytest.fixture(scope="module")
def doc(server) -> dict[str, Any]:
    r = httpx.get(server.url + "/openapi.json", headers={"accept-encoding": "identity"}, timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    return r.json()


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/components/schemas/"), ref
        schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return schema


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()
            if method in METHODS]


def test_openapi_is_an_openapi_3_1_document(doc):
    assert doc["openapi"].startswith("3.1.")
    assert doc["info"]["title"] == "lorebase"
    assert doc["info"]["version"]
    assert doc["paths"]


def test_openapi_lists_the_public_routes(doc):
    for path, method in [("/health", "get"), ("/ping", "get"), ("/error", "post"), ("/openapi.json", "get")]:
        assert method in doc["paths"].get(path, {}), (path, method)


def test_error_route_documents_its_request_schema(doc):
    body = doc["paths"]["/error"]["post"]["requestBody"]
    assert body["required"] is True
    schema = resolve(doc, body["content"]["application/json"]["schema"])
    assert schema["type"] == "object"
    assert schema["required"] == ["message"]
    assert schema.get("additionalProperties") is False
    props = schema["properties"]
    assert set(props) == {"message", "url", "stack", "line", "column"}
    assert props["message"]["type"] == "string"
    assert (props["message"]["minLength"], props["message"]["maxLength"]) == (1, 2000)
    assert props["url"]["maxLength"] == 2048
    assert props["stack"]["maxLength"] == 8000
    assert props["line"]["type"] == props["column"]["type"] == "integer"


def test_error_route_documents_its_reply_codes(doc):
    responses = doc["paths"]["/error"]["post"]["responses"]
    for status in ("200", "400", "404", "405", "413", "414", "415", "429", "503"):
        assert status in responses, status
    assert "`rate`" in responses["429"]["description"]
    assert "`size`" in responses["413"]["description"]
    assert "`type`" in responses["415"]["description"]
    assert "`validation`" in responses["400"]["description"] and "`json`" in responses["400"]["description"]


def test_every_route_documents_its_replies(doc):
    for path, method, op in operations(doc):
        responses = op["responses"]
        assert "200" in responses, (path, method)
        for status in ("404", "405", "414"):
            assert status in responses, (path, method, status)
        if method == "get":
            assert "304" in responses, (path, method)
        if "requestBody" in op:
            for status in ("400", "413", "415"):
                assert status in responses, (path, method, status)
        for status, reply in responses.items():
            if int(status) >= 400:
                schema = reply["content"]["application/json"]["schema"]
                assert resolve(doc, schema)["required"] == ["error"], (path, method, status)


def test_every_schema_reference_resolves(doc):
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"], ref


def test_every_documented_route_is_served(client, doc):
    """No documented path/method answers 404 notfound or 405 (bodies left out: no handler runs)."""
    for path, method, _ in operations(doc):
        if "{" in path:
            continue
        r = client.request(method.upper(), path, headers={"x-real-ip": client_ip()})
        assert r.status_code not in (404, 405), (method, path, r.status_code, r.text)


def test_undocumented_methods_are_405_with_the_documented_allow(client, doc):
    for path, item in doc["paths"].items():
        if "{" in path:
            continue
        documented = {m.upper() for m in item if m in METHODS}
        if "GET" in documented:
            documented.add("HEAD")
        method = next(m for m in ("PATCH", "DELETE", "PUT", "POST") if m not in documented)
        r = client.request(method, path, headers={"x-real-ip": client_ip()})
        assert_error(r, 405, "method")
        assert {m.strip() for m in r.headers["allow"].split(",")} == documented, path


def test_server_enforces_the_documented_bounds(client, doc):
    schema = resolve(doc, doc["paths"]["/error"]["post"]["requestBody"]["content"]["application/json"]["schema"])
    longest = schema["properties"]["message"]["maxLength"]
    highest = schema["properties"]["line"]["maximum"]
    assert post_json(client, "/error", {"message": "m" * longest, "line": highest}).status_code == 200
    assert_error(post_json(client, "/error", {"message": "m" * (longest + 1)}), 400, "validation", "message")
    assert_error(post_json(client, "/error", {"message": "m", "line": highest + 1}), 400, "validation", "line")
    assert_error(post_json(client, "/error", {"message": "m", "undocumented": 1}), 400, "validation",
                 "undocumented")


def test_openapi_command_prints_the_served_document(server, doc):
    out = subprocess.run([sys.executable, "-m", "lorebase", "openapi"], env=server.environ(), cwd=ROOT,
                         capture_output=True, timeout=30, check=True)
    assert json.loads(out.stdout) == doc
