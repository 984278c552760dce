"""Review of the intake's use of the template catalogue, black-box: a real intake and worker, the
sandbox and redis-server.

A template Meta paused (or that awaits approval) mid-campaign is no longer answered 422: Braze
does not retry a 4xx, so every later user of the campaign lost the message, those inside the
window (who get Braze's own body) too. A parameter holding Liquid that Braze did not render is
refused instead of reaching the user."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.conftest import PAGE, RedisServer, Sandbox, Stack, base_env, wait_until
from worker.templates import TemplateInfo

pytestmark = pytest.mark.integration
APP_SECRET = "review-templates-app-secret-0123456789"


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    env = base_env(redis_server.url, sandbox.url, APP_SECRET=APP_SECRET, WINDOW_RECHECK_SECONDS="60")
    s = Stack(env, sandbox, redis_server.url, tmp_path_factory.mktemp("review-templates"))
    s.start_intake()
    s.start_worker()
    # the worker syncs every page's catalogue when it starts: the sandbox's default one
    assert wait_until(lambda: s.redis().zscore(s.keys.templates_synced, PAGE) is not None, 30)
    yield s
    s.stop()


def text(psid: str) -> dict[str, Any]:
    return {"recipient": {"id": psid}, "messaging_type": "UPDATE", "message": {"text": "hi"}}


def utility_calls(stack: Stack, psid: str) -> list[dict[str, Any]]:
    return [c for c in stack.sandbox.calls(psid=psid) if c["body"].get("messaging_type") == "UTILITY"]


def test_a_paused_template_is_accepted_and_users_inside_the_window_get_the_message(stack: Stack) -> None:
    headers = {"X-Utility-Template": "paused_template", "X-Utility-Parameters": '["A-1"]'}
    psid = "inside-" + uuid.uuid4().hex[:8]
    resp = stack.post(text(psid), headers=headers)
    assert resp.status_code == 202, resp.text
    delivery_id = resp.json()["delivery_id"]
    stack.wait_final([delivery_id])
    record = stack.delivery(delivery_id)
    assert (record["status"], record["delivered_via"]) == ("sent", "window")


def test_outside_the_window_a_paused_template_moves_on_to_the_next_route(stack: Stack) -> None:
    headers = {
        "X-Utility-Template": "paused_template",
        "X-Utility-Parameters": '["A-1"]',
        "X-Fallback-Tags": "HUMAN_AGENT",
    }
    psid = "outside-paused-" + uuid.uuid4().hex[:8]
    resp = stack.post(text(psid), headers=headers)
    assert resp.status_code == 202, resp.text
    delivery_id = resp.json()["delivery_id"]
    stack.wait_final([delivery_id])
    record = stack.delivery(delivery_id)
    assert (record["status"], record["delivered_via"]) == ("sent", "tag:HUMAN_AGENT")
    assert utility_calls(stack, psid) == []  # the catalogue said paused: no doomed call


@pytest.mark.parametrize(
    ("name", "reason"), [("paused_template", "template_paused"), ("pending_template", "template_pending")]
)
def test_with_no_other_route_the_message_waits_for_the_template(stack: Stack, name: str, reason: str) -> None:
    psid = "outside-wait-" + uuid.uuid4().hex[:8]
    resp = stack.post(text(psid), headers={"X-Utility-Template": name, "X-Utility-Parameters": '["A-1"]'})
    assert resp.status_code == 202, resp.text
    delivery_id = resp.json()["delivery_id"]

    def waiting() -> bool:
        error = stack.record(delivery_id).get("error")
        return error is not None and orjson.loads(error)["reason"] == reason

    assert wait_until(waiting, 20), stack.record(delivery_id)
    assert stack.record(delivery_id)["status"] == "scheduled"
    assert utility_calls(stack, psid) == []


def test_a_template_that_cannot_be_sent_is_still_refused_naming_the_page(stack: Stack) -> None:
    gone = TemplateInfo("gone_template", "en_US", "DISABLED", 1, reason="Low quality")
    stack.redis().hset(stack.keys.templates(PAGE), gone.hash_field, gone.to_json())
    before = stack.redis().llen(stack.queue)
    for name, code in (
        ("gone_template", "utility_template_not_approved"),
        ("no_such", "unknown_utility_template"),
    ):
        resp = stack.post(
            text("outside-gone-" + uuid.uuid4().hex[:8]),
            headers={"X-Utility-Template": name, "X-Utility-Parameters": '["A-1"]'},
        )
        assert (resp.status_code, resp.json()["error"]["code"]) == (422, code)
        assert f"'{name}' (en_US) of page {PAGE}" in resp.json()["error"]["message"]
    assert stack.redis().llen(stack.queue) == before


@pytest.mark.parametrize(
    "parameters", ['["{{${first_name}}}", "A-1"]', '["Ada", "{{custom_attribute.${last_order_id}}}"]']
)
def test_liquid_braze_did_not_render_is_refused_not_sent(stack: Stack, parameters: str) -> None:
    psid = "outside-liquid-" + uuid.uuid4().hex[:8]
    headers = {"X-Utility-Template": "order_update", "X-Utility-Parameters": parameters}
    resp = stack.post(text(psid), headers=headers)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["code"] == "invalid_utility_parameters"
    assert "Liquid" in error["message"]
    assert stack.sandbox.calls(psid=psid) == []
