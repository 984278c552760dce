"""Dead letters: deliveries that used up MAX_ATTEMPTS or MESSAGE_TTL while retrying.

They stay in ``P:dead`` with their record and last error until replayed or purged. Replay keeps
the delivery_id, resets attempts and the TTL clock, and is atomic per delivery (a Lua script that
acts only on a delivery that is still ``dead``), so running it twice sends nothing twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from worker import store
from worker.config import Settings
from worker.store import envelope as broker

# REPLAY: KEYS[1] dead zset, KEYS[2] pending zset, KEYS[3] open zset. ARGV[1] now, ARGV[2] sweep_after,
# ARGV[3] prefix, ARGV[4..] ids. Returns the ids actually replayed (those still dead).
REPLAY_LUA = """
local now = tonumber(ARGV[1])
local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local key = ARGV[3] .. ':d:' .. id
  if redis.call('HGET', key, 'status') == 'dead' then
    local first = redis.call('HGET', key, 'first_created_at') or redis.call('HGET', key, 'created_at')
    redis.call('HSET', key, 'status', 'queued', 'attempts', 0, 'failures', 0, 'not_before', 0,
      'lease_until', 0, 'created_at', now, 'first_created_at', first, 'updated_at', now,
      'active_tag', '', 'tags_tried', '[]')
    redis.call('HINCRBY', key, 'replays', 1)
    redis.call('PERSIST', key)
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), id)
    redis.call('ZADD', KEYS[3], now, id)
    table.insert(out, id)
  end
end
return out
"""


@dataclass(frozen=True)
class Filter:
    page_id: str | None = None
    error_code: int | None = None
    older_than: float | None = None  # seconds since death
    limit: int = 1000

    def matches(self, rec: dict[str, str], died_at: float, now: float) -> bool:
        if self.page_id is not None and rec.get("page_id") != self.page_id:
            return False
        if self.error_code is not None:
            err = orjson.loads(rec.get("error") or "{}")
            if err.get("code") != self.error_code:
                return False
        return not (self.older_than is not None and now - died_at < self.older_than)


async def list_dead(client: aioredis.Redis, settings: Settings, flt: Filter) -> list[dict[str, Any]]:
    keys = store.Keys(settings.key_prefix, settings.queue_name)
    now = time.time()
    entries = await client.zrange(keys.dead, 0, -1, withscores=True)
    out: list[dict[str, Any]] = []
    for start in range(0, len(entries), 500):
        chunk = entries[start : start + 500]
        pipe = client.pipeline(transaction=False)
        for member, _score in chunk:
            pipe.hgetall(keys.delivery(store._s(member)))
        records = await pipe.execute()
        for (member, score), raw in zip(chunk, records, strict=True):
            delivery_id = store._s(member)
            rec = store.decode_record(raw) if raw else {}
            if rec and flt.matches(rec, float(score), now):
                view = store.public_view(delivery_id, rec)
                view["dead_at"] = float(score)
                out.append(view)
                if len(out) >= flt.limit:
                    return out
    return out


async def replay(client: aioredis.Redis, settings: Settings, ids: list[str]) -> list[str]:
    keys = store.Keys(settings.key_prefix, settings.queue_name)
    if not ids:
        return []
    script = client.register_script(REPLAY_LUA)
    done: list[str] = []
    for start in range(0, len(ids), settings.batch_max):
        chunk = ids[start : start + settings.batch_max]
        res = await script(
            keys=[keys.dead, keys.pending, keys.open],
            args=[repr(time.time()), settings.sweep_after_seconds, settings.key_prefix, *chunk],
        )
        replayed = [store._s(i) for i in res]
        await broker.publish(client, settings.queue_name, replayed, settings.batch_max)
        done += replayed
    return done


async def purge(client: aioredis.Redis, settings: Settings, ids: list[str]) -> int:
    keys = store.Keys(settings.key_prefix, settings.queue_name)
    if not ids:
        return 0
    pipe = client.pipeline(transaction=True)
    for delivery_id in ids:
        pipe.zrem(keys.dead, delivery_id)
        pipe.delete(keys.delivery(delivery_id))
    res = await pipe.execute()
    return sum(1 for r in res[0::2] if r)
