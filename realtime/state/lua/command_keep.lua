-- Keep the answers of finished commands of one exam for their retries, many in one call.
--
-- KEYS[1] the exam's set of session ids (routes the call to the exam's slot; not touched).
-- ARGV[1] kept answer key prefix (the command id is appended; same slot), ARGV[2] TTL in
-- seconds, then pairs: command id, answer (JSON).

local ttl = tonumber(ARGV[2])
for k = 3, #ARGV, 2 do
  redis.call('SET', ARGV[1] .. ARGV[k], ARGV[k + 1], 'EX', ttl)
end
return (#ARGV - 2) / 2
