-- Resolve a dead event: an operator closes it with a reason (SPEC §10 "resolved"). It
-- stays stored and showable, leaves the dead set (so the dead-letter gauge and
-- `replay --status dead` no longer see it) and joins the resolved set. Anything not dead
-- is left alone: a replay that made it pending again wins over a resolve racing it.
--
-- KEYS: 1 event hash, 2 history list, 3 dead zset, 4 resolved zset
-- ARGV: 1 member, 2 now_ms, 3 history entry, 4 reason, 5 actor
-- Returns 1 resolved, 0 unknown (expired or never stored), 2 not dead (unchanged).
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 0 end
if state ~= 'dead' then return 2 end
redis.call('HSET', KEYS[1], 'state', 'resolved', 'resolved_reason', ARGV[4],
           'resolved_by', ARGV[5], 'resolved_ms', ARGV[2], 'updated_ms', ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[3])
local received = redis.call('HGET', KEYS[1], 'received_ms') or ARGV[2]
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], received, ARGV[1])
return 1
