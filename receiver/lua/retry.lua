-- Park an event for a later attempt and acknowledge its queue entry atomically; the
-- promote script puts it back on the stream when it is due.
--
-- KEYS: 1 event hash, 2 history list, 3 stream, 4 retry zset
-- ARGV: 1 stream entry id, 2 group, 3 attempts, 4 last_error, 5 now_ms, 6 history entry,
--       7 member, 8 due_ms, 9 first_failed_ms (when its retry budget started)
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'attempts', ARGV[3], 'last_error', ARGV[4], 'updated_ms', ARGV[5],
             'first_failed_ms', ARGV[9])
  redis.call('RPUSH', KEYS[2], ARGV[6])
  redis.call('ZADD', KEYS[4], ARGV[8], ARGV[7])
end
redis.call('XACK', KEYS[3], ARGV[2], ARGV[1])
redis.call('XDEL', KEYS[3], ARGV[1])
return 1
