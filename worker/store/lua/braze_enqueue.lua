-- ENQUEUE: KEYS[1] outbox; ARGV: items, in order (LPUSH: the first one is sent first).
return redis.call('LPUSH', KEYS[1], unpack(ARGV))
