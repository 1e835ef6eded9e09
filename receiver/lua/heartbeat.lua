-- A worker's heartbeat (issue 14, item 6): its last beat in the index, what it is in its
-- own expiring hash, and consumers not heard of for the forget period dropped.
-- KEYS: 1 workers index zset, 2 this worker's hash
-- ARGV: 1 consumer, 2 now_ms, 3 forget_ms, 4… name/value pairs of the hash
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[3]))
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
