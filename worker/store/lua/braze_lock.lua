-- BRAZE_LOCK: the outbox drainer's lock, kept or let go only by its holder.
-- KEYS[1] the lock. ARGV[1] this drainer's name, ARGV[2] 'renew' or 'release', ARGV[3] ms.
-- renew: extends the lock when this drainer holds it (1), else 0 (another took it after it ran
-- out: this drainer must stop). release: deletes it when this drainer holds it.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == 'release' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
end
return 1
