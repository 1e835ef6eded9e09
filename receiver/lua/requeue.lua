-- Replay: put a stored event back on the queue as pending, with a fresh attempt budget
-- (count and time). The sink's ordering guard decides again, so a replay can never
-- regress a record. A resolved event replayed by id is open again (it leaves the
-- resolved set).
--
-- KEYS: 1 event hash, 2 history list, 3 stream, 4 dead zset, 5 retry zset, 6 resolved zset
-- ARGV: 1 member, 2 now_ms, 3 history entry
-- Returns 1 queued, 0 unknown (expired or never stored, or the tombstone of a lost event:
-- it has no body left to apply).
if redis.call('HEXISTS', KEYS[1], 'body') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', 'pending', 'attempts', '0', 'last_error', '',
           'reason_code', '', 'updated_ms', ARGV[2])
redis.call('HDEL', KEYS[1], 'first_failed_ms', 'resolved_reason', 'resolved_by', 'resolved_ms')
redis.call('RPUSH', KEYS[2], ARGV[3])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('XADD', KEYS[3], '*', 'm', ARGV[1])
return 1
