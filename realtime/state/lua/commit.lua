-- One Commit, atomically: compare-and-set on the session version, then give each event the
-- exam's next sequence number, append it to the exam log and publish it. Doing all of this in
-- one script is what keeps seq order, log order and publish order identical for every reader.
--
-- KEYS[1] session hash, KEYS[2] exam seq counter, KEYS[3] exam log (zset, score = seq)
-- ARGV[1] expected version ('' = unconditional: record the events, leave the session alone)
-- ARGV[2] pubsub channel, ARGV[3] log max size, ARGV[4] number of field/value pairs
-- ARGV[5 .. 4 + 2n] field/value pairs (JSON-encoded values), then one msgpack blob per event
--
-- Returns {1, new version (0 if unconditional), seq...} | {0} no such session | {-1} conflict.

if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0}
end

local npairs = tonumber(ARGV[4])
local version = 0
if ARGV[1] ~= '' then
  local current = tonumber(redis.call('HGET', KEYS[1], 'version'))
  if current ~= tonumber(ARGV[1]) then
    return {-1}
  end
  if npairs > 0 then
    redis.call('HSET', KEYS[1], unpack(ARGV, 5, 4 + 2 * npairs))
  end
  version = redis.call('HINCRBY', KEYS[1], 'version', 1)
end

local result = {1, version}
local first = 5 + 2 * npairs
for i = first, #ARGV do
  local seq = redis.call('INCR', KEYS[2])
  local member = seq .. ':' .. ARGV[i]
  redis.call('ZADD', KEYS[3], seq, member)
  redis.call('PUBLISH', ARGV[2], member)
  result[#result + 1] = seq
end
if #ARGV >= first then
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[3]) + 1))
end
return result
