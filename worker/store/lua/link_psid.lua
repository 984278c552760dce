-- LINK_PSID: remember which Braze user a (page, PSID) belongs to, under LINK_CONFLICT_POLICY.
-- Called only for a ref that proved it was issued by us (worker/messenger/refs.py).
-- KEYS[1] the (page, PSID)'s external id key (P:ext:{page}:{psid}).
-- ARGV[1] the external id the ref names, ARGV[2] the key's TTL (s), ARGV[3] 'keep' or 'replace'.
-- Returns {outcome, previous external id or ''}:
--   'new'       the PSID was linked to nobody: now to ARGV[1]
--   'same'      already linked to ARGV[1]: TTL renewed
--   'kept'      linked to another user and the policy is keep: nothing changed
--   'replaced'  linked to another user and the policy is replace: now linked to ARGV[1]
local previous = redis.call('GET', KEYS[1])
if not previous then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return {'new', ''}
end
if previous == ARGV[1] then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return {'same', previous}
end
if ARGV[3] ~= 'replace' then
  return {'kept', previous}
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return {'replaced', previous}
