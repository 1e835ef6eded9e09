-- Deduplicate, store and enqueue one event in a single atomic step (PITFALLS: never
-- claim-then-process). A sender retry after a crash finds either nothing (and we store it)
-- or the complete stored event (and it is a duplicate): there is no state in between.
--
-- KEYS: 1 event hash, 2 history list, 3 stream, 4 index zset, 5 dead zset
-- ARGV: 1 body_sha256, 2 now_ms, 3 ttl_ms, 4 member, 5 state, 6 history entry,
--       7 JSON object of string fields for the event hash, 8 body (raw or sealed bytes)
-- Returns 1 new, 0 duplicate (same body), 2 conflict (same id, different body).
local stored_sha = redis.call('HGET', KEYS[1], 'body_sha256')
if stored_sha then
  if stored_sha == ARGV[1] then return 0 end
  return 2
end
local now = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local fields = {'body', ARGV[8]}
for name, value in pairs(cjson.decode(ARGV[7])) do
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('RPUSH', KEYS[2], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[4], now, ARGV[4])
-- Retention for the indexes and the queue (the hashes expire by themselves).
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - ttl)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - ttl)
if ARGV[5] == 'pending' then
  redis.call('XADD', KEYS[3], 'MINID', '~', tostring(now - ttl), '*', 'm', ARGV[4])
else
  redis.call('ZADD', KEYS[5], now, ARGV[4])
end
return 1
