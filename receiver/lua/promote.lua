-- Move events whose retry is due back onto the stream.
-- KEYS: 1 stream, 2 retry zset.  ARGV: 1 now_ms, 2 limit.  Returns how many moved.
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[2], member)
  redis.call('XADD', KEYS[1], '*', 'm', member)
end
return #due
