-- Pause every reconciler, or lift a refused key's pause.
-- KEYS: 1 pause string, 2 refused string
-- ARGV: 1 mode: 'rate_limited' (a 429: pause for its Retry-After), 'refused' (a 401/403:
--       pause until the next recheck and remember why) or 'accepted' (an answer that was
--       not a refusal: the key works, so its pause and flag go; a 429's pause stays),
--       2 pause_ms, 3 refused status, 4 refused_ttl_ms
-- A longer pause already set stands.
local mode = ARGV[1]
if mode == 'accepted' then
  redis.call('DEL', KEYS[2])
  if redis.call('GET', KEYS[1]) == 'refused' then redis.call('DEL', KEYS[1]) end
  return 1
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], mode, 'PX', ARGV[2])
end
if mode == 'refused' then redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4]) end
return 1
