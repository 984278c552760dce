"""An error in one recipient group's pacing call hands back only that group.

With RECIPIENT_RATE_LIMIT on, every send asks ``acquire.lua`` for the page's slot and the
recipient's (``P:rl:r:{page}:{psid}``). That key is set to a plain string for ONE recipient, so
Redis answers WRONGTYPE to that recipient's pacing calls only. One batch carries messages to five
recipients: the four others are sent, once each, while the key is still wrong; the bad
recipient's deliveries are handed back (``delivery.released`` with reason ``engine_error``) and
not sent, again and again, without burning an attempt. Once the key is deleted they are sent,
once each and in order.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from tests.conftest import PAGE, Stack, wait_until
from tests.reliability.harness import (
    Supervisor,
    account_stack,
    assert_one_outcome_line,
    events,
    psid_and_text,
    read_records,
    run_tag,
    text_body,
    wait_all_final,
)

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(120)]
PER_RECIPIENT = 3


def test_one_groups_pacing_error_hands_back_only_that_group(make_stack: Any) -> None:
    tag = run_tag("grp")
    stack: Stack = make_stack(RECIPIENT_RATE_LIMIT="20")
    stack.start_intake()
    recipients = [f"{tag}-r{n}" for n in range(5)]
    bad = recipients[2]
    client = stack.redis()
    client.set(stack.keys.recipient_bucket(PAGE, bad), "not a bucket")
    # one batch (posted before the worker starts), each recipient's messages oldest first
    bodies = [text_body(r, f"{r}#{k}") for k in range(PER_RECIPIENT) for r in recipients]
    ids = stack.post_many([(f"/v25.0/{PAGE}/messages", b) for b in bodies], concurrency=1)
    accepted = {f"{b['recipient']['id']}/{b['message']['text']}": i for b, i in zip(bodies, ids, strict=True)}
    bad_ids = [i for k, i in accepted.items() if k.startswith(f"{bad}/")]
    good_ids = [i for i in ids if i not in bad_ids]
    with Supervisor(stack) as supervisor:
        stack.start_worker()
        started = time.monotonic()
        good = wait_all_final(stack, good_ids, timeout=60)
        good_after = time.monotonic() - started

        def handed_back_twice() -> bool:
            released = Counter(
                str(e.get("delivery_id"))
                for e in events(stack.logs(), "delivery.released", reason="engine_error")
            )
            return all(released[i] >= 2 for i in bad_ids)

        assert wait_until(handed_back_twice, 30, 0.5), "the bad group was not handed back (again)"
        waiting = read_records(stack, bad_ids)
        sent_while_bad = [c for c in stack.sandbox.calls() if c["psid"] == bad]
        client.delete(stack.keys.recipient_bucket(PAGE, bad))
        done = wait_all_final(stack, bad_ids, timeout=60)
        supervisor.assert_no_unexpected_exits()
    logs = stack.logs()
    acc = account_stack(stack, accepted, {**good, **done}, supervisor=supervisor, tag=tag, key=psid_and_text)
    print(
        f"\ngroup error: the {len(good_ids)} other deliveries sent in {good_after:.1f} s; the bad group "
        f"handed back {len(events(logs, 'delivery.released', reason='engine_error'))} times "
        f"({len(events(logs, 'engine.group_failed'))} engine.group_failed lines), then sent; {acc.summary()}"
    )
    assert {r["status"] for r in good.values()} == {"sent"}
    assert not sent_while_bad, "the bad recipient was sent to while its pacing call failed"
    assert {r["status"] for r in waiting.values()} <= {"queued", "in_flight"}, waiting
    assert all(int(r.get("failures") or 0) == 0 for r in waiting.values())  # no attempt burnt
    assert events(logs, "engine.group_failed")
    assert {r["status"] for r in done.values()} == {"sent"}
    assert all(r["attempts"] == "1" for r in done.values())  # one Graph call each, in the end
    acc.assert_exact(allow_duplicates=False)
    assert_one_outcome_line(logs, {**good, **done})  # handed back however often, written sent once
    order = [
        c["body"]["message"]["text"] for c in stack.sandbox.calls() if c["psid"] == bad and c["status"] == 200
    ]
    assert order == [f"{bad}#{k}" for k in range(PER_RECIPIENT)]  # still in order
