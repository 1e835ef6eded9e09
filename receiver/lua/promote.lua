-- The worker's periodic housekeeping for one queue shard: move events whose retry is due
-- back onto the stream, and drop index, dead-set and resolved-set members older than the
-- retention (their hashes have expired by themselves).
-- KEYS: 1 stream, 2 retry zset, 3 index zset, 4 dead zset, 5 resolved zset.
-- ARGV: 1 now_ms, 2 limit, 3 retention_ms.  Returns how many retries moved.
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[2], member)
  redis.call('XADD', KEYS[1], '*', 'm', member)
end
local horizon = tonumber(ARGV[1]) - tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', horizon)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', horizon)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', horizon)
return #due
