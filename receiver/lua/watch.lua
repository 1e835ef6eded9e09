-- Keep one watch shard in step with what the worker applied, or register tracked tasks:
-- one call per watch shard per batch (issue 16: never a command per request on ingest).
--
-- KEYS: 1 due zset, 2 since zset, 3 meta hash (one watch shard, see keys.WatchKeys)
-- ARGV: triples of op, task id, due_ms; op is
--   'w' watch: a non-terminal state was applied; the next check is due at due_ms and the
--       backoff starts again (progress was seen);
--   't' track: watch from now unless already watched (the product just submitted it);
--   'u' unwatch: a terminal state was applied (or found stale: the record is terminal).
-- Returns how many tasks were not watched before.
--
-- meta is "<checks> <errors> <lease_until_ms> <wanted_due_ms> <holder>": polls since the
-- last progress, transient failures in a row, when the lease a reconciler holds ends (0:
-- none), the due time to take when that lease is released (0: none; set when progress
-- came in while it was held, so a lease is never cut short and its holder never
-- overruled), and the holder's claim (the lease end at claim time; 0: none). Renewing a
-- lease moves its end, never its holder, so a release racing a renewal still matches.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local now = now_ms()
local added = 0
for i = 1, #ARGV, 3 do
  local op, task, due = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if op == 'u' then
    redis.call('ZREM', KEYS[1], task)
    redis.call('ZREM', KEYS[2], task)
    redis.call('HDEL', KEYS[3], task)
  else
    local new = redis.call('ZADD', KEYS[2], 'NX', now, task)
    added = added + new
    if new == 1 then
      redis.call('ZADD', KEYS[1], due, task)
      redis.call('HSET', KEYS[3], task, '0 0 0 0 0')
    elseif op == 'w' then
      local meta = redis.call('HGET', KEYS[3], task) or '0 0 0 0 0'
      local lease, holder = string.match(meta, '^%d+ %d+ (%d+) %d+ (%d+)$')
      if lease and tonumber(lease) > now then
        redis.call('HSET', KEYS[3], task, '0 0 ' .. lease .. ' ' .. due .. ' ' .. holder)
      else
        redis.call('ZADD', KEYS[1], due, task)
        redis.call('HSET', KEYS[3], task, '0 0 0 0 0')
      end
    end
  end
end
return added
