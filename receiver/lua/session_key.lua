-- The console's session signing key: made by whichever process asks first, read by all.
-- One step, so two replicas starting together cannot each keep a key of their own.
-- KEYS: 1 the key
-- ARGV: 1 fresh random bytes, used only when no key exists yet
-- Returns the key in force.
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
