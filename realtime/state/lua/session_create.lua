-- Create a session unless it exists (add_sessions must not overwrite live state). Returns 1 if
-- created, 2 if it existed with this access code (a repeated or retried import), else 0.
-- KEYS: session hash, exam session-id set; ARGV: session id, access code (JSON), field/value pairs.
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'access_code') == ARGV[2] then return 2 end
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('SADD', KEYS[2], ARGV[1])
return 1
