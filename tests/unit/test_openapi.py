"""The OpenAPI document against the app it describes, without Redis: the same routes, the same
path parameters, every delivery status and view field, every refusal code of the send route."""

from __future__ import annotations

import ast
import inspect
from typing import Any

from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from worker.config import Settings
from worker.intake import create_app
from worker.intake.openapi import openapi_document
from worker.messenger import content, recipients, utility, validation
from worker.states import State
from worker.store import records

SETTINGS = Settings(
    page_access_tokens={"100": "tok-page-100-abcdef"},
    intake_tokens=["tok-intake-abcdef-0123456789abcdefghij"],
    _env_file=None,
)
METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")


def served() -> dict[tuple[str, str], Route]:
    """(path, method) -> route, for every route of the app's API (HEAD comes with GET: ignored;
    the operator console's HTML pages under /console are not API operations)."""
    out: dict[tuple[str, str], Route] = {}
    for route in create_app(SETTINGS).routes:
        if isinstance(route, Mount) and route.path == "/console":
            continue
        assert isinstance(route, Route), route
        for method in route.methods or ():
            if method != "HEAD":
                out[(route.path, method.lower())] = route
    return out


def documented() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (path, method): operation
        for path, item in openapi_document()["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    }


def test_the_document_has_exactly_the_routes_the_app_serves() -> None:
    assert set(documented()) == set(served())


def test_every_path_parameter_is_documented_and_nothing_else() -> None:
    operations = documented()
    for key, route in served().items():
        in_doc = {p["name"] for p in operations[key].get("parameters", []) if p["in"] == "path"}
        assert in_doc == set(route.param_convertors), key
        for param in operations[key].get("parameters", []):
            if param["in"] == "path":
                assert param["required"] is True, (key, param["name"])


def test_operation_ids_are_unique() -> None:
    ids = [op["operationId"] for op in documented().values()]
    assert len(ids) == len(set(ids))


def test_the_delivery_status_enum_is_every_state() -> None:
    schema = openapi_document()["components"]["schemas"]["Delivery"]
    assert schema["properties"]["status"]["enum"] == [s.value for s in State]


def test_the_delivery_schema_has_every_field_of_the_public_view() -> None:
    record = {
        "status": State.RETRYING.value,
        "attempts": "2",
        "page_id": "100",
        "created_at": "1.5",
        "updated_at": "2.5",
        "message_id": "m_1",
        "sent_at": "3.5",
        "error": records.error_fields("graph", 2, None, "temporary").decode(),
        "delivered_tag": "HUMAN_AGENT",
        "delivered_via": "tag:HUMAN_AGENT",
        "first_created_at": "0.5",
        "replays": "1",
        "not_before": "9.5",
    }
    view = records.public_view("d1", record)
    schemas = openapi_document()["components"]["schemas"]
    properties = schemas["Delivery"]["properties"]
    assert set(view) <= set(properties)
    assert set(view["error"]) <= set(properties["error"]["properties"])
    assert set(schemas["Delivery"]["required"]) <= set(records.public_view("d2", {"status": "queued"}))


def _codes_raised_by_validation() -> set[str]:
    """Every ``_fail("code", ...)`` in the intake's input checks (worker.messenger)."""
    tree = ast.Module(
        body=[
            node
            for module in (validation, content, recipients, utility)
            for node in ast.parse(inspect.getsource(module)).body
        ],
        type_ignores=[],
    )
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "_fail"
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    }


def _documented_codes(operation: dict[str, Any]) -> set[str]:
    codes: set[str] = set()
    for response in operation["responses"].values():
        schema = response.get("content", {}).get("application/json", {}).get("schema", {})
        for part in schema.get("allOf", []):
            code = part.get("properties", {}).get("error", {}).get("properties", {}).get("code", {})
            codes |= set(code.get("enum", []))
    return codes


def test_every_refusal_code_of_the_send_route_is_documented() -> None:
    codes = _codes_raised_by_validation()
    assert {"invalid_json", "missing_recipient", "no_page_token"} <= codes  # the walk finds them
    send = documented()[("/{version}/{page_id}/messages", "post")]
    assert codes <= _documented_codes(send)


def test_every_503_code_of_the_send_route_is_documented_with_retry_after() -> None:
    from worker.intake import committer

    failures = {
        cls.code
        for cls in vars(committer).values()
        if isinstance(cls, type) and issubclass(cls, committer.CommitFailed)
    }
    assert failures == {"unavailable", "unavailable_maybe_stored", "overloaded"}
    for path in ("/me/messages", "/{version}/me/messages", "/{version}/{page_id}/messages"):
        answer = documented()[(path, "post")]["responses"]["503"]
        assert _documented_codes({"responses": {"503": answer}}) == failures | {"redis_full"}
        assert "Retry-After" in answer["headers"]


def test_the_served_document_is_the_module_s() -> None:
    with TestClient(create_app(SETTINGS)) as client:  # the lifespan opens clients, but none connects
        assert client.get("/openapi.json").json() == openapi_document()
