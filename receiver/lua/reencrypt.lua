-- Replace a stored body with its re-encrypted form, compare-and-set: only if the hash
-- still holds the body we read, so an expired event is not resurrected without a TTL
-- (a bare HSET would create it) and two concurrent re-encryptions cannot interleave.
-- KEYS: 1 event hash.  ARGV: 1 body as read, 2 re-encrypted body.
-- Returns 1 if replaced, 0 if the body changed or the event is gone.
if redis.call('HGET', KEYS[1], 'body') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'body', ARGV[2], 'encrypted', '1')
return 1
