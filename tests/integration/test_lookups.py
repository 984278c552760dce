"""The operators' look-ups through the admin API and the CLI: the same read model the console shows."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_HEADERS, INTAKE_TOKEN, Stack

pytestmark = pytest.mark.integration


def send(stack: Stack, psid: str) -> str:
    resp = stack.post({"recipient": {"id": psid}, "messaging_type": "UPDATE", "message": {"text": "hi"}})
    assert resp.status_code == 202, resp.text
    delivery_id: str = resp.json()["delivery_id"]
    return delivery_id


def admin_get(stack: Stack, path: str, headers: dict[str, str] = ADMIN_HEADERS) -> httpx.Response:
    return httpx.get(f"{stack.intake_url}{path}", headers=headers, timeout=10)


def test_a_delivery_s_history_and_a_recipient_s_state(make_stack: Any) -> None:
    stack: Stack = make_stack()
    stack.start_intake()
    stack.start_worker()
    flaky = send(stack, f"flaky2-2-lk{uuid.uuid4().hex[:6]}")  # two transient errors, then sent
    first_try = send(stack, f"lk{uuid.uuid4().hex[:8]}")
    closed = f"outside-lk{uuid.uuid4().hex[:6]}"
    stack.wait_final([flaky, first_try, send(stack, closed)])

    story = admin_get(stack, f"/v1/deliveries/{flaky}/history").json()
    assert [(e["status"], e.get("reason"), e.get("code")) for e in story["history"]] == [
        ("accepted", None, None),
        ("retrying", "transient", 2),
        ("retrying", "transient", 2),
        ("sent", None, None),
    ]
    assert story["history"][-1]["route"] == "window"
    assert (story["attempts"], story["failures"]) == (3, 2)
    plain = admin_get(stack, f"/v1/deliveries/{first_try}/history").json()
    assert [e["status"] for e in plain["history"]] == ["accepted", "sent"]  # no history written for it
    assert stack.redis().exists(stack.keys.history(first_try)) == 0
    sender = {"Authorization": f"Bearer {INTAKE_TOKEN}"}
    assert admin_get(stack, f"/v1/deliveries/{flaky}/history", sender).status_code == 403
    assert admin_get(stack, "/v1/deliveries/nope/history").status_code == 404

    state = admin_get(stack, f"/v1/pages/100/recipients/{closed}").json()
    assert (state["window"], state["parked_count"], state["suppressed"]) == ("closed", 0, None)
    assert state["graph_said_closed_at"] is not None
    cli = json.loads(stack.cli("lookup", "recipient", "--page", "100", closed).stdout)
    assert cli["window"] == "closed"
    assert json.loads(stack.cli("lookup", "delivery", flaky).stdout)["history"] == story["history"]
