-- Append audit rows to an exam's outbox (the drainer writes them to SQL), with an id after
-- the exam's current seq so the outbox stays in order.
--
-- KEYS[1] exam seq counter, KEYS[2] exam outbox (stream); ARGV[1] now, ARGV[2] msgpack rows

local seq = redis.call('GET', KEYS[1]) or '0'
redis.call('XADD', KEYS[2], seq .. '-*', 't', ARGV[1], 'a', ARGV[2])
return 1
