-- Housekeeping: forget tasks watched for longer than the retention (no reconciler ran to
-- give them up, e.g. no API key anywhere), so the watch list stays bounded.
-- KEYS: 1 due zset, 2 since zset, 3 meta hash.  ARGV: 1 horizon_ms, 2 limit.
-- Returns how many tasks were dropped.
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, task in ipairs(old) do
  redis.call('ZREM', KEYS[1], task)
  redis.call('ZREM', KEYS[2], task)
  redis.call('HDEL', KEYS[3], task)
end
return #old
