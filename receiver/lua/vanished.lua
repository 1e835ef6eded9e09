-- A queue entry whose event hash is gone: expired by retention, or lost while it should
-- still be stored (evicted by a Redis with a maxmemory policy other than noeviction, or
-- lost with writes a crashed Redis never persisted). Decide which, record it, and
-- acknowledge the entry, in one step.
--
-- The receive time comes from the index (scored by it). Housekeeping trims index members
-- past the retention, so a member missing from an index that exists has expired; only an
-- index gone altogether (evicted itself) leaves the stream entry id to go by (its enqueue
-- time in ms: the receipt for the entry ingest queued, later for a retry or a replay). A lost
-- event leaves a tombstone for the rest of its retention: a small hash in state dead with
-- reason_code lost, in the dead set and the index, so `events list --status dead` shows it.
-- It has no body: a replay refuses it, and a sender's retry of the same id is accepted as
-- new (accept.lua looks for body_sha256).
--
-- KEYS: 1 event hash, 2 history list, 3 stream, 4 index zset, 5 dead zset
-- ARGV: 1 stream entry id, 2 group, 3 member, 4 now_ms, 5 retention_ms, 6 slack_ms,
--       7 source, 8 event id, 9 last_error, 10 history entry
-- Returns 'present' (stored again meanwhile: its new entry carries it), 'expired', 'lost'.
local outcome = 'expired'
if redis.call('EXISTS', KEYS[1]) == 1 then
  outcome = 'present'
else
  local received = tonumber(redis.call('ZSCORE', KEYS[4], ARGV[3]))
  if not received and redis.call('EXISTS', KEYS[4]) == 0 then
    received = tonumber(string.match(ARGV[1], '^(%d+)'))
  end
  received = received or 0  -- trimmed from the index: past its retention
  -- What is left of its retention: more than the slack (clock skew between us and Redis,
  -- which set the TTL) means the hash should still be there.
  local left = received + tonumber(ARGV[5]) - tonumber(ARGV[4])
  if left > tonumber(ARGV[6]) then
    outcome = 'lost'
    redis.call('HSET', KEYS[1], 'source', ARGV[7], 'event_id', ARGV[8], 'state', 'dead',
               'attempts', '0', 'last_error', ARGV[9], 'reason_code', 'lost',
               'received_ms', received, 'updated_ms', ARGV[4])
    redis.call('PEXPIRE', KEYS[1], left)
    redis.call('RPUSH', KEYS[2], ARGV[10])
    redis.call('PEXPIRE', KEYS[2], left)
    redis.call('ZADD', KEYS[4], received, ARGV[3])
    redis.call('ZADD', KEYS[5], received, ARGV[3])
  end
end
redis.call('XACK', KEYS[3], ARGV[2], ARGV[1])
redis.call('XDEL', KEYS[3], ARGV[1])
return outcome
