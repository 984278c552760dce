"""A campaign's report must be trusted: campaigns of mixed fates through real processes (a real
redis-server, the intake, Celery workers, the sandbox's Graph, the Braze double), and the report
checked against itself while it is written (``accepted = sent + failed + expired + dead +
cancelled + open``, nothing negative), against the status API per delivery, against the
``messenger_delivery`` events Braze received and against ``bmw_deliveries_total``."""

from __future__ import annotations

import hashlib
import hmac
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_HEADERS, Stack, free_port, wait_port, wait_until
from worker.states import State

pytestmark = pytest.mark.integration
APP_SECRET = "fates-app-secret-0123456789abcdef"
BRAZE_KEY = "fates-braze-rest-key-0123456789"
ENDED = ("sent", "failed", "expired", "dead", "cancelled")


@pytest.fixture
def braze(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "braze.log").open("wb")
    double = subprocess.Popen(
        [sys.executable, "-m", "tests.doubles.braze", "--port", str(port), "--api-key", BRAZE_KEY],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    assert wait_port(port)
    yield f"http://127.0.0.1:{port}"
    double.terminate()
    double.wait(timeout=20)


def braze_events(url: str) -> list[dict[str, Any]]:
    reqs = httpx.get(f"{url}/__braze/requests", timeout=10).json()["requests"]
    return [e for r in reqs if r["status"] == 201 for e in (r.get("body") or {}).get("events", [])]


def admin(stack: Stack, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{stack.intake_url}{path}", headers=ADMIN_HEADERS, timeout=30, **kw)


def send(stack: Stack, psid: str, camp: str, *, page: str = "100", key: str | None = None) -> httpx.Response:
    headers = {"X-Braze-Campaign-Id": camp, "X-Braze-External-Id": f"u-{psid}"}
    if key:
        headers["Idempotency-Key"] = key
    body = {"recipient": {"id": psid}, "messaging_type": "UPDATE", "message": {"text": "hi"}}
    return stack.post(body, path=f"/v25.0/{page}/messages", headers=headers)


def webhook(stack: Stack, page: str, items: list[dict[str, Any]]) -> None:
    raw = orjson.dumps(
        {"object": "page", "entry": [{"id": page, "time": int(time.time() * 1000), "messaging": items}]}
    )
    sig = "sha256=" + hmac.new(APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    resp = httpx.post(
        f"{stack.intake_url}/messenger/webhook",
        content=raw,
        headers={"Content-Type": "application/json", "X-Hub-Signature-256": sig},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text


def deliveries_total(url: str) -> Counter[str]:
    found: Counter[str] = Counter()
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for sample in family.samples:
            if sample.name == "bmw_deliveries_total":
                found[sample.labels["outcome"]] += int(sample.value)
    return found


class Watch:
    """Reads the report again and again while it is written; keeps what was impossible."""

    def __init__(self, stack: Stack, camps: list[str]) -> None:
        self.stack, self.camps, self.reads = stack, camps, 0
        self.bad: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def check(self, view: dict[str, Any]) -> None:
        self.reads += 1
        numbers = [view[k] for k in ("accepted", *ENDED, "open", "delivered", "read", "replayed")]
        if min(numbers) < 0 or view["accepted"] != sum(view[k] for k in ENDED) + view["open"]:
            self.bad.append(view)
        if view["read"] > view["delivered"] or view["delivered"] > view["sent"]:
            self.bad.append(view)

    def _run(self) -> None:
        with httpx.Client(base_url=self.stack.intake_url, headers=ADMIN_HEADERS, timeout=10) as client:
            while not self._stop.is_set():
                for camp in self.camps:
                    resp = client.get(f"/v1/campaigns/{camp}")
                    if resp.status_code == 200:
                        self.check(resp.json())
                for view in client.get("/v1/campaigns").json()["campaigns"]:
                    if view["campaign_id"] in self.camps:
                        self.check(view)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_mixed_fates_add_up_and_agree(make_stack: Any, braze: str) -> None:
    run = uuid.uuid4().hex[:6]
    ca, cb = f"fa-{run}", f"fb-{run}"
    stack: Stack = make_stack(
        APP_SECRET=APP_SECRET,
        BRAZE_REST_URL=braze,
        BRAZE_API_KEY=BRAZE_KEY,
        BRAZE_OUTCOME_EVENTS="true",
        WINDOW_POLICY="park",
        MESSAGE_TTL="12",
    )
    stack.start_intake()
    ids: dict[str, str] = {}
    with Watch(stack, [ca, cb]) as watch:
        # a worker killed (SIGKILL) while its call is under way: another takes it after the lease
        kill_port = free_port()
        stack.env["METRICS_PORT"] = str(kill_port)
        doomed = stack.start_worker(name="doomed")
        ids["slow"] = send(stack, f"slow1500-k{run}", ca).json()["delivery_id"]
        assert wait_until(lambda: stack.record(ids["slow"]).get("status") == State.IN_FLIGHT.value, 20)
        time.sleep(0.5)
        killed_counts = deliveries_total(f"http://127.0.0.1:{kill_port}/metrics")
        doomed.stop(signal.SIGKILL)
        port = free_port()
        stack.env["METRICS_PORT"] = str(port)
        stack.start_worker()
        metrics_url = f"http://127.0.0.1:{port}/metrics"

        # sent, with its Braze retry (same Idempotency-Key) counted once
        for i in range(6):
            first = send(stack, f"ok{run}-{i}", ca, key=f"k{run}-{i}")
            assert first.status_code == 202, first.text
            again = send(stack, f"ok{run}-{i}", ca, key=f"k{run}-{i}")
            assert again.json() == {"delivery_id": first.json()["delivery_id"], "status": "duplicate"}
            ids[f"ok{i}"] = first.json()["delivery_id"]
        ids["unreach"] = send(stack, f"err-551-u{run}", ca).json()["delivery_id"]  # failed
        ids["flaky"] = send(stack, f"flaky2-1200-f{run}", ca).json()["delivery_id"]  # sent, 3 attempts
        ids["dead1"] = send(stack, f"flaky3-1200-d{run}", ca).json()["delivery_id"]  # dead, then sent
        ids["dead2"] = send(stack, f"flaky9-1200-e{run}", ca).json()["delivery_id"]  # dead, dead, purged
        ids["parked"] = send(stack, f"outside-p{run}", ca).json()["delivery_id"]  # parked, expired
        # a page paused: its deliveries wait; one is cancelled, the rest go when it resumes
        assert admin(stack, "POST", "/v1/pages/200/pause").status_code == 200
        for i in range(3):
            ids[f"p{i}"] = send(stack, f"pg{run}-{i}", ca, page="200").json()["delivery_id"]
        assert wait_until(lambda: stack.record(ids["p0"]).get("status") == State.SCHEDULED.value, 20)
        assert admin(stack, "POST", f"/v1/deliveries/{ids['p0']}/cancel").json()["cancelled"] is True

        # campaign B stopped while some of it is held, then a new request of it
        for i in range(4):
            ids[f"b{i}"] = send(stack, f"slow800-b{run}-{i}", cb).json()["delivery_id"]
        for i in range(4, 6):  # waiting for the paused page: cancelled by the stop
            ids[f"b{i}"] = send(stack, f"b{run}-{i}", cb, page="200").json()["delivery_id"]
        time.sleep(0.3)
        stopped = admin(stack, "POST", f"/v1/campaigns/{cb}/stop")
        assert stopped.json()["cancelled"] >= 2, stopped.text
        late = send(stack, f"late-b{run}", cb)
        assert (late.status_code, late.json()["status"]) == (200, State.CANCELLED.value)
        ids["blate"] = late.json()["delivery_id"]

        assert wait_until(lambda: stack.record(ids["dead1"]).get("status") == State.DEAD.value, 30)
        assert wait_until(lambda: stack.record(ids["dead2"]).get("status") == State.DEAD.value, 30)
        replay = admin(
            stack, "POST", "/v1/dead-letters/replay", json={"delivery_ids": [ids["dead1"], ids["dead2"]]}
        )
        assert replay.json()["count"] == 2, replay.text
        again = admin(stack, "POST", "/v1/dead-letters/replay", json={"delivery_ids": [ids["dead1"]]})
        assert again.json()["count"] == 0, again.text  # queued again: nothing to replay twice
        assert admin(stack, "POST", "/v1/pages/200/resume").status_code == 200
        assert wait_until(lambda: stack.record(ids["dead2"]).get("status") == State.DEAD.value, 30)
        assert (
            admin(stack, "POST", "/v1/dead-letters/replay", json={"delivery_ids": [ids["dead2"]]}).json()[
                "count"
            ]
            == 1
        )
        assert wait_until(lambda: stack.record(ids["dead2"]).get("status") == State.DEAD.value, 30)
        assert (
            admin(stack, "POST", "/v1/dead-letters/purge", json={"delivery_ids": [ids["dead2"]]}).status_code
            == 200
        )

        purged = ids.pop("dead2")
        assert stack.record(purged) == {}
        records = stack.wait_final(list(ids.values()), timeout=60)
        # receipts: every sent one of A delivered, the first three read; a failed one's ignored
        now_ms = int(time.time() * 1000)
        sent_a = [k for k in ids if records[ids[k]]["status"] == "sent" and not k.startswith("b")]
        items = []
        for k in sent_a:
            psid = {
                "slow": f"slow1500-k{run}",
                "flaky": f"flaky2-1200-f{run}",
                "dead1": f"flaky3-1200-d{run}",
            }.get(k, f"ok{run}-{k[2:]}")
            if k.startswith("p"):
                continue
            items.append(
                {
                    "sender": {"id": psid},
                    "recipient": {"id": "100"},
                    "timestamp": now_ms,
                    "delivery": {"watermark": now_ms},
                }
            )
        items.append(
            {
                "sender": {"id": f"err-551-u{run}"},
                "recipient": {"id": "100"},
                "timestamp": now_ms,
                "read": {"watermark": now_ms},
            }
        )
        for i in range(3):
            items.append(
                {
                    "sender": {"id": f"ok{run}-{i}"},
                    "recipient": {"id": "100"},
                    "timestamp": now_ms,
                    "read": {"watermark": now_ms},
                }
            )
        webhook(stack, "100", items)
        webhook(stack, "100", items)  # Meta sends it again: nothing more
        assert wait_until(lambda: admin(stack, "GET", f"/v1/campaigns/{ca}").json()["read"] == 3, 20)
        time.sleep(1)
    assert watch.reads > 20
    assert watch.bad == [], watch.bad[:3]

    statuses = {k: records[v]["status"] for k, v in ids.items()}
    statuses["dead2"] = "dead"  # purged: its death stays counted
    va = admin(stack, "GET", f"/v1/campaigns/{ca}").json()
    vb = admin(stack, "GET", f"/v1/campaigns/{cb}").json()
    for camp, view in ((ca, va), (cb, vb)):
        mine = Counter(s for k, s in statuses.items() if k.startswith("b") == (camp == cb))
        assert {k: view[k] for k in ENDED} == {k: mine.get(k, 0) for k in ENDED}, (camp, view, mine)
        assert view["open"] == 0
        assert view["accepted"] == sum(mine.values())
    assert va["replayed"] == 3
    assert (va["delivered"], va["read"]) == (len([k for k in sent_a if not k.startswith("p")]), 3)
    # the status API per delivery says what the counters say
    for v in ids.values():
        assert stack.delivery(v)["status"] == records[v]["status"]

    # Braze got one messenger_delivery event per final outcome (a dead letter replayed: one per death)
    def outcome_events() -> Counter[tuple[str, str]]:
        return Counter(
            (e["properties"].get("campaign_id"), e["properties"]["status"])
            for e in braze_events(braze)
            if e["name"] == "messenger_delivery"
        )

    expected: Counter[tuple[str, str]] = Counter()
    for camp, view in ((ca, va), (cb, vb)):
        for k in ENDED:
            if view[k]:
                expected[(camp, k)] = view[k]
    expected[(ca, "dead")] += 3  # the deaths replayed since
    extra, missing = outcome_events() - expected, expected - outcome_events()
    assert wait_until(lambda: outcome_events() == expected, 20), {"extra": extra, "missing": missing}
    # bmw_deliveries_total: the workers' and the intake's, summed
    total = deliveries_total(metrics_url) + killed_counts + deliveries_total(stack.intake_metrics_url)
    ended_total = {k: va[k] + vb[k] for k in ENDED}
    ended_total["dead"] += 3
    assert {k: total.get(k, 0) for k in ENDED} == ended_total, total
