-- Move an exam's seq counter up to at least ARGV[1] (never down).
--
-- KEYS[1] exam seq counter

local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
