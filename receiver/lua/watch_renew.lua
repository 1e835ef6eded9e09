-- Extend the leases a reconciler still holds (its requests are still running). The claim
-- stays the same, so a release sent while a renewal is on its way still matches.
-- KEYS: 1 due zset, 2 since zset, 3 meta hash
-- ARGV: 1 lease_ms, then pairs of task id, claim
-- Returns 1 per task renewed, 0 where the task is no longer this holder's.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = string.format('%d', now + tonumber(ARGV[1]))
local renewed = {}
for i = 2, #ARGV, 2 do
  local task, claim = ARGV[i], ARGV[i + 1]
  local meta = redis.call('HGET', KEYS[3], task)
  local checks, errors, wanted, holder
  if meta then
    checks, errors, wanted, holder = string.match(meta, '^(%d+) (%d+) %d+ (%d+) (%d+)$')
  end
  if holder == claim then
    redis.call('ZADD', KEYS[1], lease, task)
    redis.call('HSET', KEYS[3], task,
               checks .. ' ' .. errors .. ' ' .. lease .. ' ' .. wanted .. ' ' .. holder)
    renewed[#renewed + 1] = 1
  else
    renewed[#renewed + 1] = 0
  end
end
return renewed
