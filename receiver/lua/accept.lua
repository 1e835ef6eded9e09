-- Deduplicate, store and enqueue one event in a single atomic step (PITFALLS: never
-- claim-then-process). A sender retry after a crash finds either nothing (and we store it)
-- or the complete stored event (and it is a duplicate): there is no state in between.
--
-- KEYS: 1 event hash, 2 history list, 3 stream, 4 index zset, 5 dead zset,
--       6 record index zset (this shard's events of the record), 7 key-use hash (this minute)
-- ARGV: 1 body_sha256, 2 now_ms (the receive time), 3 ttl_ms, 4 member, 5 state,
--       6 history entry, 7 body (raw or sealed bytes), 8… name/value pairs of the event
--       hash's other fields, in a fixed order: source first (ARGV[9]), record_key fourth
--       (ARGV[15]), signing_key last (ARGV[#ARGV], '' when none)
-- Returns 1 new, 0 duplicate (same body), 2 conflict (same id, different body).
--
-- PERF: Redis runs this for every new event, so it does no more than it must: the fields
-- arrive as flat arguments (no JSON decoding in Lua), and retention trimming of the index
-- and dead sets happens in the worker's periodic housekeeping (promote.lua), not here.
-- Fields whose value is already an argument (state, times, body hash) or a constant
-- (attempts) are written from here: each argument costs the client ~1.5k instructions.
-- Counting the verifying key here keeps ingest at one command per delivery (issue 14).
local now = tonumber(ARGV[2])
local signing_key = ARGV[#ARGV]
if signing_key ~= '' then
  -- Every verified delivery counts, duplicates too: it shows which key senders still use.
  if redis.call('HINCRBY', KEYS[7], ARGV[9] .. '|' .. signing_key, 1) == 1 then
    redis.call('PEXPIRE', KEYS[7], COUNTER_TTL_MS)
  end
end
local stored_sha = redis.call('HGET', KEYS[1], 'body_sha256')
if stored_sha then
  if stored_sha == ARGV[1] then return 0 end
  return 2
end
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'body', ARGV[7], 'state', ARGV[5], 'attempts', '0',
           'received_ms', ARGV[2], 'updated_ms', ARGV[2], 'body_sha256', ARGV[1],
           unpack(ARGV, 8))
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('RPUSH', KEYS[2], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[4], now, ARGV[4])
if ARGV[15] ~= '' then
  -- Lives as long as the newest of its events; readers skip members past the retention.
  redis.call('ZADD', KEYS[6], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[6], ttl)
end
if ARGV[5] == 'pending' then
  -- MINID trims queue entries older than the retention (approximately, hence cheap).
  redis.call('XADD', KEYS[3], 'MINID', '~', tostring(now - ttl), '*', 'm', ARGV[4])
else
  redis.call('ZADD', KEYS[5], now, ARGV[4])
end
return 1
