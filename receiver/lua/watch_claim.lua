-- Take the due tasks of one watch shard for polling, atomically: each one's score moves to
-- the end of a lease, so no other reconciler takes it meanwhile, and one that is killed
-- mid-batch loses nothing (the lease runs out and the task is due again).
--
-- KEYS: 1 due zset, 2 since zset, 3 meta hash
-- ARGV: 1 limit, 2 lease_ms
-- Returns a flat list, five values per task: task id, since_ms, checks, errors, and the
-- claim (the lease end at claim time, which renew and release must show to act on the
-- task; renewing moves the lease end but keeps the claim).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = string.format('%d', now + tonumber(ARGV[2]))
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local taken = {}
for _, task in ipairs(due) do
  local meta = redis.call('HGET', KEYS[3], task) or '0 0 0 0 0'
  local checks, errors = string.match(meta, '^(%d+) (%d+)')
  local since = redis.call('ZSCORE', KEYS[2], task)
  if not since then
    since = string.format('%d', now)
    redis.call('ZADD', KEYS[2], since, task)
  end
  redis.call('ZADD', KEYS[1], lease, task)
  redis.call('HSET', KEYS[3], task,
             (checks or '0') .. ' ' .. (errors or '0') .. ' ' .. lease .. ' 0 ' .. lease)
  taken[#taken + 1] = task
  taken[#taken + 1] = since
  taken[#taken + 1] = checks or '0'
  taken[#taken + 1] = errors or '0'
  taken[#taken + 1] = lease
end
return taken
