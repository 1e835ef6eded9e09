-- Keep the members of a bulk replay started from the console, so its page can follow
-- them to their outcomes: written once, with its expiry, in one step.
-- KEYS: 1 the list
-- ARGV: 1 ttl_ms, 2… members
redis.call('DEL', KEYS[1])
redis.call('RPUSH', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return #ARGV - 1
