-- Give back an entry this worker read but will not process (shutdown): acknowledge it
-- and queue the event again at the tail, so another worker takes it now rather than
-- after the visibility timeout.
-- KEYS: 1 stream.  ARGV: 1 entry id, 2 group, 3 member.
redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[1], '*', 'm', ARGV[3])
return 1
