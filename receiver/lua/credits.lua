-- Commit one batch of the credit ledger (receiver/ops/credits.py) if nobody else counted
-- it first: compare-and-set on the shard's cursor, then every task state and per-model
-- sum of the batch, in one step (what WATCH/MULTI did, without holding a connection).
-- All keys share the {credits} hash tag: one cluster slot.
--
-- KEYS: 1 the shard's cursor, 2 the days zset, then per day: its tasks hash, its sums hash
-- ARGV: 1 the cursor as read ('' when none), 2 the new cursor, 3 JSON list, one object per
--       day in KEYS order: {"expires": unix s, "tasks": {task: state}, "sums": {field: +x}}
-- Returns 1 committed, 0 the cursor moved meanwhile (nothing written).
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then return 0 end
local days = cjson.decode(ARGV[3])
for i, day in ipairs(days) do
  local tasks, sums = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  for task, state in pairs(day.tasks) do
    redis.call('HSET', tasks, task, state)
  end
  for name, value in pairs(day.sums) do
    redis.call('HINCRBYFLOAT', sums, name, value)
  end
  redis.call('EXPIREAT', tasks, day.expires)
  redis.call('EXPIREAT', sums, day.expires)
  redis.call('ZADD', KEYS[2], day.expires, day.name)
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
