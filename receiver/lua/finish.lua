-- Record a worker's outcome and acknowledge the queue entry in one step, so an event is
-- never both acknowledged and still "pending", nor finished and still queued.
--
-- KEYS: 1 event hash, 2 history list, 3 stream, 4 dead zset
-- ARGV: 1 stream entry id ('' for none), 2 group, 3 state, 4 attempts, 5 last_error,
--       6 now_ms, 7 history entry, 8 member
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'state', ARGV[3], 'attempts', ARGV[4], 'last_error', ARGV[5],
             'updated_ms', ARGV[6])
  -- RPUSH keeps an existing list's expiry; only a list it had to create needs one.
  if redis.call('RPUSH', KEYS[2], ARGV[7]) == 1 then
    local ttl = redis.call('PTTL', KEYS[1])
    if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
  end
  if ARGV[3] == 'dead' then
    local received = redis.call('HGET', KEYS[1], 'received_ms') or ARGV[6]
    redis.call('ZADD', KEYS[4], received, ARGV[8])
  else
    redis.call('ZREM', KEYS[4], ARGV[8])
  end
end
if ARGV[1] ~= '' then
  redis.call('XACK', KEYS[3], ARGV[2], ARGV[1])
  -- Acknowledged entries are of no further use: the event lives in its hash.
  redis.call('XDEL', KEYS[3], ARGV[1])
end
return 1
