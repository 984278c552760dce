"""The delivery store: every Redis key this service owns, and the Lua scripts that change them.

A delivery's record is the source of truth for its fate; Celery messages only say "look at these
ids now". That is what makes "nothing lost" hold even where Celery-on-Redis is not airtight
(pitfalls.md: a kill -9 or a Redis restart can leave a message in no queue):

Keys (``P`` is ``KEY_PREFIX``, default ``bmw``)::

    P:d:{id}            hash   the delivery: status, page_id, psid, body, attempts, timestamps,
                               lease_until, not_before, message_id, error, tags …
    P:open              zset   every non-final delivery -> its acceptance time (oldest-waiting age)
    P:pending           zset   every non-final delivery -> the time by which it must have progressed;
                               the sweeper re-enqueues members past that time (lost Celery messages,
                               workers killed mid-send)
    P:sched             zset   deliveries waiting (retry backoff, rate-limit, paused page) -> due time;
                               released to the queue by the scheduler, never by a Celery countdown
    P:dead              zset   dead letters -> time of death
    P:idem:{key}        string Idempotency-Key -> delivery id (TTL IDEMPOTENCY_TTL)
    P:supp:{page}:{psid}    string  recipient unreachable (TTL SUPPRESSION_TTL)
    P:supptag:{page}:{psid} string  tagged sends suppressed after a tag-abuse warning
    P:pause:{page}      hash   page pause: until, reason, code, token fingerprint
    P:paused            zset   paused pages -> until (for status)
    P:batch:{bid}       list   delivery ids gathered for one ``worker.deliver_batch`` message while
                               it waits in the queue (taken whole by the worker that claims it)
    P:gather:{queue}    string the id of the queue's newest batch, which commits append to
    {QUEUE_NAME}        list   the Celery queue (kombu's Redis layout)

Statuses: ``queued``, ``retrying`` and ``parked`` (outside the 24-hour window, waiting for the
user to re-engage) are open; ``sent``, ``failed``, ``expired`` and ``dead``
are final. A worker *claims* a delivery (atomically: open, due, not leased) before sending; the
lease (DELIVERY_LEASE_SECONDS) is what stops two workers sending the same delivery when the
sweeper and Celery both hand it out.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

OPEN_STATUSES = frozenset({"queued", "retrying", "parked"})
FINAL_STATUSES = frozenset({"sent", "failed", "expired", "dead"})

# ACCEPT: the intake's group commit, one call per batch of requests.
# KEYS[1] pending zset, KEYS[2] Celery queue list, KEYS[3] open zset, KEYS[4] the queue's gather
# pointer (P:gather:{queue}).
# ARGV[1] now, ARGV[2] idempotency ttl, ARGV[3] sweep_after, ARGV[4] key prefix,
# ARGV[5] the Celery message of a new batch (``worker.deliver_batch(ARGV[7])``, serialised),
# ARGV[6] fields per item (F), ARGV[7] the new batch's id, ARGV[8] QUEUE_BATCH_MAX,
# ARGV[9] a batch list's TTL (s), then from ARGV[10] F values per item:
#   id, idempotency key ("" for none), page_id, psid, body, token ("" = configured page token),
#   fallback tags (JSON list), request id, Braze external_id ("" for none).
# Returns, per item, "" when accepted or the existing delivery id for a repeated idempotency key.
# The accepted ids join the queue's newest batch while it is still queued (its list exists: no
# worker has taken it) and has room for them all; otherwise they start a new batch and its
# message is pushed. A backlog thus travels in messages of up to QUEUE_BATCH_MAX ids, while an
# idle queue still gets one message per commit. The list outlives sweep_after, so a message
# that is lost leaves its ids to the sweeper (their pending deadline), never to nobody.
ACCEPT_LUA = """
local now = ARGV[1]
local idem_ttl = tonumber(ARGV[2])
local deadline = tonumber(now) + tonumber(ARGV[3])
local prefix = ARGV[4]
local per = tonumber(ARGV[6])
local cap = tonumber(ARGV[8])
local ttl = tonumber(ARGV[9])
local out = {}
local accepted = {}
local i = 10
while i <= #ARGV do
  local id = ARGV[i]
  local idem = ARGV[i + 1]
  local existing = false
  if idem ~= '' then
    local key = prefix .. ':idem:' .. idem
    if redis.call('SET', key, id, 'NX', 'EX', idem_ttl) == false then
      existing = redis.call('GET', key)
    end
  end
  if existing then
    table.insert(out, existing)
  else
    redis.call('HSET', prefix .. ':d:' .. id,
      'status', 'queued', 'page_id', ARGV[i + 2], 'psid', ARGV[i + 3], 'body', ARGV[i + 4],
      'token', ARGV[i + 5], 'fallback_tags', ARGV[i + 6], 'request_id', ARGV[i + 7],
      'idempotency_key', idem, 'external_id', ARGV[i + 8], 'created_at', now, 'updated_at', now,
      'attempts', 0)
    redis.call('ZADD', KEYS[1], deadline, id)
    redis.call('ZADD', KEYS[3], now, id)
    table.insert(accepted, id)
    table.insert(out, '')
  end
  i = i + per
end
if #accepted > 0 then
  local batch = nil
  local newest = redis.call('GET', KEYS[4])
  if newest then
    local key = prefix .. ':batch:' .. newest
    local n = redis.call('LLEN', key)
    if n > 0 and n + #accepted <= cap then batch = key end
  end
  if not batch then
    batch = prefix .. ':batch:' .. ARGV[7]
    redis.call('LPUSH', KEYS[2], ARGV[5])
    redis.call('SET', KEYS[4], ARGV[7], 'EX', ttl)
  end
  redis.call('RPUSH', batch, unpack(accepted))
  redis.call('EXPIRE', batch, ttl)
end
return out
"""

# CLAIM: a worker takes ownership of the deliveries of one Celery message.
# KEYS[1] pending zset; for a ``worker.deliver_batch`` message also KEYS[2] its batch list and
# KEYS[3] the queue's gather pointer. ARGV[1] now, ARGV[2] lease seconds, ARGV[3] key prefix,
# ARGV[4..] the ids (``worker.deliver``) or the batch id (``worker.deliver_batch``: the list is
# taken whole and deleted, so later commits start a new batch).
# A delivery is claimed when it exists, is open, is due (not_before <= now) and is not leased.
# Returns the number of ids looked at, then a flat list: id, then its HGETALL array, for each
# claimed id.
CLAIM_LUA = """
local now = tonumber(ARGV[1])
local lease = now + tonumber(ARGV[2])
local prefix = ARGV[3]
local ids
if #KEYS == 3 then
  ids = redis.call('LRANGE', KEYS[2], 0, -1)
  redis.call('DEL', KEYS[2])
  if redis.call('GET', KEYS[3]) == ARGV[4] then redis.call('DEL', KEYS[3]) end
else
  ids = {unpack(ARGV, 4)}
end
local out = {#ids}
for _, id in ipairs(ids) do
  local key = prefix .. ':d:' .. id
  local st = redis.call('HMGET', key, 'status', 'not_before', 'lease_until')
  if (st[1] == 'queued' or st[1] == 'retrying' or st[1] == 'parked')
     and tonumber(st[2] or '0') <= now and tonumber(st[3] or '0') <= now then
    redis.call('HSET', key, 'lease_until', lease)
    redis.call('ZADD', KEYS[1], lease + 1, id)
    table.insert(out, id)
    table.insert(out, redis.call('HGETALL', key))
  end
end
return out
"""

# RELEASE: the scheduler moves due waits back to the queue. KEYS[1] sched zset.
# ARGV[1] now, ARGV[2] limit. Returns the released ids (removed from sched atomically; a worker
# that dies before publishing them leaves them in ``pending``, where the sweeper finds them).
RELEASE_LUA = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids > 0 then redis.call('ZREM', KEYS[1], unpack(ids)) end
return ids
"""

# SWEEP: re-enqueue open deliveries that made no progress in time. KEYS[1] pending, KEYS[2] sched.
# ARGV[1] now, ARGV[2] limit, ARGV[3] sweep_after, ARGV[4] prefix. Final or vanished records are
# dropped from pending; deliveries still waiting in sched get their deadline pushed back.
SWEEP_LUA = """
local now = tonumber(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local st = redis.call('HGET', ARGV[4] .. ':d:' .. id, 'status')
  if st == 'queued' or st == 'retrying' or st == 'parked' then
    local due = redis.call('ZSCORE', KEYS[2], id)
    if due then
      redis.call('ZADD', KEYS[1], tonumber(due) + tonumber(ARGV[3]), id)
    else
      redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), id)
      table.insert(out, id)
    end
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""


# FINAL: record final outcomes. KEYS[1] pending zset, KEYS[2] open zset, KEYS[3] dead zset.
# ARGV[1] now, ARGV[2] record retention (s), ARGV[3] prefix; then per delivery: id, status, n,
# and n field/value pairs for its record. Each record gets the fields, leaves pending and open
# (and goes to dead for status "dead") and expires after the retention. One call per batch
# instead of four commands per delivery.
FINAL_LUA = """
local i = 4
while i <= #ARGV do
  local id, status, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local key = ARGV[3] .. ':d:' .. id
  redis.call('HSET', key, unpack(ARGV, i + 3, i + 2 + 2 * n))
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('EXPIRE', key, tonumber(ARGV[2]))
  if status == 'dead' then redis.call('ZADD', KEYS[3], tonumber(ARGV[1]), id) end
  i = i + 3 + 2 * n
end
return 1
"""

# PAUSE: pause a page (or extend its pause). KEYS[1] pause hash, KEYS[2] paused zset.
# ARGV[1] now, ARGV[2] seconds asked, ARGV[3] reason, ARGV[4] Graph code, ARGV[5] token fingerprint,
# ARGV[6] grow (1: a rate limit right after a pause ended doubles the next pause; answers of the
# same wave while paused do not), ARGV[7] cap seconds for that growth,
# ARGV[8] page id. A pause never shortens an existing one. Returns the pause's end (epoch s).
PAUSE_LUA = """
local now = tonumber(ARGV[1])
local seconds = tonumber(ARGV[2])
local prev = redis.call('HMGET', KEYS[1], 'until', 'strikes')
local prev_until = tonumber(prev[1] or '0')
local strikes = 1
if ARGV[6] == '1' then
  local prev_strikes = tonumber(prev[2] or '0')
  if prev_until > now then
    strikes = math.max(prev_strikes, 1)  -- the same wave of answers: no new strike
  elseif prev_until > now - 60 then
    strikes = prev_strikes + 1  -- throttled again right after a pause: double it
  end
  seconds = math.min(math.max(tonumber(ARGV[7]), seconds), seconds * 2 ^ (strikes - 1))
end
local until_t = math.max(prev_until, now + seconds)
redis.call('HSET', KEYS[1], 'until', string.format('%.3f', until_t), 'reason', ARGV[3], 'code', ARGV[4],
  'token_fp', ARGV[5], 'strikes', strikes)
redis.call('HDEL', KEYS[1], 'probe')
redis.call('EXPIRE', KEYS[1], math.floor(until_t - now) + 120)
redis.call('ZADD', KEYS[2], until_t, ARGV[8])
return string.format('%.3f', until_t)
"""


@dataclass(frozen=True)
class Keys:
    prefix: str
    queue: str

    def delivery(self, delivery_id: str) -> str:
        return f"{self.prefix}:d:{delivery_id}"

    @property
    def pending(self) -> str:
        return f"{self.prefix}:pending"

    @property
    def sched(self) -> str:
        return f"{self.prefix}:sched"

    @property
    def open(self) -> str:
        return f"{self.prefix}:open"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    @property
    def parked(self) -> str:
        """Deliveries parked until their recipient writes again (:mod:`worker.inbound`)."""
        return f"{self.prefix}:parked"

    @property
    def paused(self) -> str:
        return f"{self.prefix}:paused"

    def idem(self, key: str) -> str:
        return f"{self.prefix}:idem:{key}"

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}"

    @property
    def gather(self) -> str:
        """The id of this queue's newest batch (ACCEPT_LUA appends to it while it is queued)."""
        return f"{self.prefix}:gather:{self.queue}"

    def suppressed(self, page_id: str, psid: str) -> str:
        return f"{self.prefix}:supp:{page_id}:{psid}"

    def tag_suppressed(self, page_id: str, psid: str) -> str:
        return f"{self.prefix}:supptag:{page_id}:{psid}"

    def pause(self, page_id: str) -> str:
        return f"{self.prefix}:pause:{page_id}"


def decode_record(raw: Sequence[Any] | dict[Any, Any]) -> dict[str, str]:
    """HGETALL as a flat list (from Lua) or a dict (from redis-py) -> str dict."""
    if isinstance(raw, dict):
        items: Iterable[tuple[Any, Any]] = raw.items()
    else:
        items = zip(raw[0::2], raw[1::2], strict=True)
    return {_s(k): _s(v) for k, v in items}


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def public_view(delivery_id: str, rec: dict[str, str]) -> dict[str, Any]:
    """The status API's view of a record: never the token, the body or the raw PSID."""
    view: dict[str, Any] = {
        "delivery_id": delivery_id,
        "status": rec.get("status", "unknown"),
        "attempts": int(rec.get("attempts", "0") or 0),
        "page_id": rec.get("page_id"),
        "created_at": float(rec.get("created_at", "0") or 0),
        "updated_at": float(rec.get("updated_at", "0") or 0),
    }
    if rec.get("message_id"):
        view["message_id"] = rec["message_id"]
    if rec.get("error"):
        view["error"] = orjson.loads(rec["error"])
    if rec.get("delivered_tag"):
        view["delivered_tag"] = rec["delivered_tag"]
    if rec.get("status") == "retrying" and rec.get("not_before"):
        view["next_attempt_at"] = float(rec["not_before"])
    return view


def open_counts(client: redis.Redis, keys: Keys) -> dict[str, int]:
    """Queue depth, scheduled waits, open deliveries and dead letters (status command, readyz)."""
    pipe = client.pipeline(transaction=False)
    pipe.llen(keys.queue)
    pipe.zcard(keys.sched)
    pipe.zcard(keys.pending)
    pipe.zcard(keys.dead)
    pipe.zcount(keys.paused, time.time(), "+inf")
    pipe.zcard(keys.parked)
    depth, sched, pending, dead, paused, parked = pipe.execute()
    return {
        "queue_depth": int(depth),
        "scheduled": int(sched),
        "open": int(pending),
        "dead_letters": int(dead),
        "paused_pages": int(paused),
        "parked": int(parked),
    }


def recent_rates(client: Any, prefix: str, minutes: int = 5) -> dict[str, float]:
    """Outcomes per second over the last ``minutes`` minutes (the current one included), and the
    failure ratio."""
    now_minute = int(time.time() // 60) + 1
    statuses = ("sent", "failed", "dead", "expired")
    keys = [f"{prefix}:stats:{m}:{st}" for m in range(now_minute - minutes, now_minute) for st in statuses]
    values = client.mget(keys)
    totals = dict.fromkeys(statuses, 0)
    for key, value in zip(keys, values, strict=True):
        if value is not None:
            totals[key.rsplit(":", 1)[1]] += int(value)
    final = sum(totals.values())
    out = {f"{st}_per_s": round(n / (minutes * 60), 2) for st, n in totals.items()}
    out["failure_ratio"] = round((totals["failed"] + totals["dead"]) / final, 4) if final else 0.0
    return out


async def fetch_record(client: aioredis.Redis, keys: Keys, delivery_id: str) -> dict[str, str] | None:
    # redis-py types its commands as "Awaitable[T] | T" for both clients; this one is async.
    raw = await client.hgetall(keys.delivery(delivery_id))  # type: ignore[misc]
    return decode_record(raw) if raw else None
