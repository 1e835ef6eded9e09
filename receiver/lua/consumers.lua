-- Housekeeping: remove consumers of the group that hold nothing and have been gone
-- (idle) at least min_idle_ms: each crashed or replaced worker process leaves its own
-- consumer name behind forever otherwise. Checking and deleting in one step matters:
-- XGROUP DELCONSUMER drops the consumer's pending entries, and a consumer that took an
-- entry between a separate check and the delete would lose it.
--
-- KEYS: 1 stream.  ARGV: 1 group, 2 min_idle_ms, 3 consumer to keep (the caller), 4 limit.
-- Returns the names removed.
if redis.replicate_commands then redis.replicate_commands() end  -- XINFO before a write (6.2)
local min_idle, keep, limit = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local removed = {}
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local fields = {}
  for i = 1, #consumer, 2 do fields[consumer[i]] = consumer[i + 1] end
  if #removed >= limit then break end
  if fields['name'] ~= keep and tonumber(fields['pending']) == 0
      and tonumber(fields['idle']) >= min_idle then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], fields['name'])
    removed[#removed + 1] = fields['name']
  end
end
return removed
