-- A reconciler is done with the tasks it held: drop them from the watch (a terminal state,
-- an unknown task, given up) or schedule their next check. Only the holder of the current
-- claim acts: a task unwatched meanwhile (a terminal webhook) stays gone.
-- If the worker saw progress while the lease was held, its due time wins and the backoff
-- starts again.
--
-- KEYS: 1 due zset, 2 since zset, 3 meta hash
-- ARGV: groups of 5: task id, claim, action ('d' drop / 'r' reschedule), due_ms,
--       "<checks> <errors>" to keep
-- Returns how many tasks were released.
local released = 0
for i = 1, #ARGV, 5 do
  local task, claim, action = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local due, counts = ARGV[i + 3], ARGV[i + 4]
  local meta = redis.call('HGET', KEYS[3], task)
  local wanted, holder
  if meta then wanted, holder = string.match(meta, '^%d+ %d+ %d+ (%d+) (%d+)$') end
  if holder == claim then
    released = released + 1
    if action == 'd' then
      redis.call('ZREM', KEYS[1], task)
      redis.call('ZREM', KEYS[2], task)
      redis.call('HDEL', KEYS[3], task)
    elseif wanted ~= '0' then
      redis.call('ZADD', KEYS[1], wanted, task)
      redis.call('HSET', KEYS[3], task, '0 0 0 0 0')
    else
      redis.call('ZADD', KEYS[1], due, task)
      redis.call('HSET', KEYS[3], task, counts .. ' 0 0 0')
    end
  end
end
return released
