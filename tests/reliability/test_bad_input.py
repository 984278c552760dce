"""Bad input: schemathesis against the intake's /openapi.json and hypothesis on the validation layer.

No input may cause a 5xx, and a request that is not answered 202 (or 200 for a repeated
Idempotency-Key) must leave Redis exactly as it was.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.conftest import INTAKE_TOKEN, RedisServer, Sandbox, Stack, base_env
from tests.reliability.harness import scale
from worker.config import Settings
from worker.intake.openapi import openapi_document
from worker.messenger.validation import BODY_FIELDS, MAX_TEXT, InputError, SendHeaders, validate

pytestmark = pytest.mark.reliability
#: Cases per operation: 30 in CI (the run's 20 minutes), 200 under RELIABILITY_LONG=1.
EXAMPLES = int(os.environ.get("RELIABILITY_EXAMPLES", str(int(scale(30, 200)))))


@pytest.fixture(scope="module")
def intake_stack(
    redis_server: RedisServer, sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    # The webhook configured as in production, so the fuzz reaches its signature checks (without
    # APP_SECRET a POST is a documented 503 not_configured: the server's fault, not the input's).
    # The values are the ones test_secrets_after_suite looks for in every log.
    env = base_env(
        redis_server.url,
        sandbox.url,
        APP_SECRET="test-app-secret-abcdef012345",
        MESSENGER_VERIFY_TOKEN="test-verify-token-98765",
    )
    stack = Stack(env, sandbox, redis_server.url, tmp_path_factory.mktemp("fuzz"))
    stack.start_intake()  # no worker: whatever is enqueued stays visible
    yield stack
    stack.stop()


# The same document the intake serves at /openapi.json (test_openapi_served_is_the_tested_one).
schema = schemathesis.openapi.from_dict(openapi_document())


def test_openapi_served_is_the_tested_one(intake_stack: Stack) -> None:
    import httpx

    assert httpx.get(f"{intake_stack.intake_url}/openapi.json", timeout=10).json() == openapi_document()


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_causes_5xx_or_a_stray_enqueue(case: Any, intake_stack: Stack) -> None:
    client = intake_stack.redis()

    def footprint() -> tuple[int, int]:  # what this intake could have written: its queue and keys
        return client.llen(intake_stack.queue), len(client.keys(f"{intake_stack.prefix}:*"))

    before = footprint()
    response = case.call(
        base_url=intake_stack.intake_url, headers={"Authorization": f"Bearer {INTAKE_TOKEN}"}
    )
    assert response.status_code < 500, (case.as_curl_command(), response.text)
    if response.status_code >= 400:
        ctype = response.headers.get("content-type") or [""]
        assert (ctype[0] if isinstance(ctype, list) else ctype).startswith("application/json")
        assert set(response.json()["error"]) == {"code", "message"}
    if response.status_code not in (200, 202):
        assert footprint() == before, case.as_curl_command()


SETTINGS = Settings(page_access_tokens={"100": "tok-page-100-abcdef"}, _env_file=None)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5)
    ),
    max_leaves=30,
)
bodies = st.fixed_dictionaries(
    {},
    optional={
        "recipient": st.one_of(
            json_values, st.fixed_dictionaries({"id": st.one_of(st.text(max_size=40), json_values)})
        ),
        "messaging_type": st.one_of(
            st.sampled_from(["RESPONSE", "UPDATE", "MESSAGE_TAG", "update"]), json_values
        ),
        "tag": st.one_of(
            st.sampled_from(["HUMAN_AGENT", "ACCOUNT_UPDATE", "SHIPPING_UPDATE", "NOPE"]), json_values
        ),
        "message": st.one_of(
            json_values,
            st.fixed_dictionaries(
                {},
                optional={
                    "text": st.one_of(
                        st.text(max_size=10), st.text(min_size=1990, max_size=2010), json_values
                    ),
                    "quick_replies": st.lists(json_values, max_size=16),
                    "attachment": json_values,
                },
            ),
        ),
        "sender_action": st.one_of(st.sampled_from(["typing_on", "mark_seen", "dance"]), json_values),
        "notification_type": st.one_of(st.sampled_from(["REGULAR", "NO_PUSH"]), json_values),
        "persona_id": json_values,
        "access_token": st.text(max_size=40),
        "appsecret_proof": st.text(max_size=40),
        "metadata": json_values,
    },
)


@given(
    body=bodies,
    header=st.one_of(st.none(), st.text(max_size=40)),
    page=st.sampled_from([None, "100", "999", "me"]),
)
@settings(max_examples=EXAMPLES * 10, deadline=None)
def test_validation_accepts_only_sendable_bodies(
    body: dict[str, Any], header: str | None, page: str | None
) -> None:
    import orjson

    error: InputError | None = None
    try:
        result = validate(
            orjson.dumps(body), SETTINGS, path_page_id=page, headers=SendHeaders(fallback_tags=header)
        )
    except InputError as exc:
        error = exc
    if error is not None:
        assert 400 <= error.status < 500
        assert error.code
        assert error.message
        return
    sent = result.body
    assert set(sent) <= set(BODY_FIELDS)  # nothing else reaches Redis or Graph, no credential
    assert orjson.loads(result.body_json) == sent
    assert isinstance(sent["recipient"]["id"], str)
    assert sent["recipient"]["id"]
    assert (sent.get("message") is None) != (sent.get("sender_action") is None)
    assert sent["messaging_type"] in ("RESPONSE", "UPDATE", "MESSAGE_TAG")
    assert (sent["messaging_type"] == "MESSAGE_TAG") == ("tag" in sent)
    text = (sent.get("message") or {}).get("text")
    assert text is None or len(text) < MAX_TEXT
    assert result.page_id == "100"
    assert result.kind in ("text", "media")
