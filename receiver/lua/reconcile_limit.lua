-- The reconcilers' global rate limit, shared by every reconciler process, on Redis's
-- clock: each request gets its own slot, 1/rate apart (virtual scheduling, as in GCRA
-- with no burst). In any window of T seconds at most T * rate + 1 slots fall, and because
-- slots are evenly spaced, requests stay evenly spaced on the wire too, whichever process
-- sends them. Slots are handed out at most `horizon` ahead; an idle limiter saves none up.
-- It also holds the pause after a 429 (its Retry-After) and, while the API key is
-- refused, lets one probe through per recheck.
--
-- KEYS: 1 next-slot string, 2 pause string, 3 refused string
-- ARGV: 1 interval_ms (1000 / rate), 2 horizon_ms, 3 recheck_ms, 4 slots wanted
-- Returns {refused, wait_ms, offset_ms...}: one offset per slot granted (from now); when
-- none is granted, wait_ms says how long until one could be.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local refused = redis.call('EXISTS', KEYS[3])
local pause = redis.call('PTTL', KEYS[2])
if pause > 0 then return {refused, pause} end
local interval, horizon = tonumber(ARGV[1]), tonumber(ARGV[2])
local want = tonumber(ARGV[4])
if refused == 1 then
  -- The key was refused: one request checks whether it works again, then all wait.
  want = 1
  redis.call('SET', KEYS[2], 'refused', 'PX', ARGV[3])
end
local next_slot = tonumber(redis.call('GET', KEYS[1]) or '0')
if next_slot < now then next_slot = now end
local reply = {refused, 0}
while #reply - 2 < want and next_slot <= now + horizon do
  reply[#reply + 1] = string.format('%.3f', next_slot - now)
  next_slot = next_slot + interval
end
if #reply == 2 then reply[2] = math.ceil(next_slot - horizon - now) end
redis.call('SET', KEYS[1], string.format('%.3f', next_slot), 'PX',
           math.ceil(next_slot - now + horizon + 1000))
return reply
