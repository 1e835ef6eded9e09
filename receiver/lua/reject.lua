-- Record a batch of rejected deliveries (issue 14, item 3) and count every rejection of
-- the batch's period, recorded or sampled out, by code. The log is bounded both ways: by
-- count (MAXLEN ~, so at most one stream node over) and by age (MINID), so a flood can
-- neither grow it nor keep old entries.
--
-- KEYS: 1 rejected stream, 2 counts hash of this minute
-- ARGV: 1 max entries, 2 min id (now - max age), 3 counter ttl_ms, 4 entries n,
--       5 fields per entry f, then n * 2f field/value values, then code/count pairs
local n, f = tonumber(ARGV[4]), tonumber(ARGV[5])
local i = 6
for _ = 1, n do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, i, i + 2 * f - 1))
  i = i + 2 * f
end
-- Exact for age (a few entries per flush at most), approximate for count (whole nodes).
if n > 0 then redis.call('XTRIM', KEYS[1], 'MINID', ARGV[2]) end
local counted = false
while i < #ARGV do
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
  counted = true
  i = i + 2
end
if counted then redis.call('PEXPIRE', KEYS[2], ARGV[3]) end
return n
