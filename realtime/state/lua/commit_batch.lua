-- Many commits of one exam, atomically each, in one call: compare-and-set (or guard check) per
-- session, the exam's next sequence numbers for the events of those that apply, then ONE
-- outbox entry and ONE published message for all of them. Doing it in one script keeps seq
-- order, outbox order and publish order identical for every reader.
--
-- KEYS[1] exam seq counter, KEYS[2] exam outbox (stream), KEYS[3 .. 2+C] the session hashes,
-- KEYS[3+C ..] command keys (hash session id -> first seq it applied the command with)
-- ARGV[1] pub/sub channel, ARGV[2] now (seconds), ARGV[3] C, ARGV[4] command key TTL (s),
-- then per commit: session id, mode ('v' compare-and-set | 'g' guarded | 'r' record only),
--   expected version, command key index (0: none), live only ('1'/'0'), guard pair count,
--   change pair count, event count, guard field/value pairs, change field/value pairs (values
--   JSON-encoded), event blobs (msgpack, without seq).
--
-- Returns {status, seq} per commit: 1 applied (seq = first event's seq, 0 if no event),
-- 0 no such session, -1 version conflict, -2 command already applied (seq = its first seq),
-- -3 guard failed. The outbox entry id is "<first seq>-*"; the message "<first seq>:<blobs>".

local C = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local first = seq + 1
local blobs = {}
local out = {}
local pos = 5
for i = 1, C do
  local key = KEYS[2 + i]
  local sid, mode, expected = ARGV[pos], ARGV[pos + 1], ARGV[pos + 2]
  local cmd = tonumber(ARGV[pos + 3])
  local live_only = ARGV[pos + 4] == '1'
  local nguard, npairs, nevents = tonumber(ARGV[pos + 5]), tonumber(ARGV[pos + 6]), tonumber(ARGV[pos + 7])
  local g0 = pos + 8
  local p0 = g0 + 2 * nguard
  local e0 = p0 + 2 * npairs
  pos = e0 + nevents
  local status, extra = 1, 0
  local cmdkey = nil
  if redis.call('EXISTS', key) == 0 then
    status = 0
  else
    if cmd > 0 then
      cmdkey = KEYS[2 + C + cmd]
      local prev = redis.call('HGET', cmdkey, sid)
      if prev then
        status, extra = -2, tonumber(prev)
      end
    end
    if status == 1 and mode == 'v' then
      if redis.call('HGET', key, 'version') ~= expected then
        status = -1
      end
    elseif status == 1 and mode == 'g' then
      for j = 0, nguard - 1 do
        if redis.call('HGET', key, ARGV[g0 + 2 * j]) ~= ARGV[g0 + 2 * j + 1] then
          status = -3
          break
        end
      end
      if status == 1 and live_only then
        local st = redis.call('HGET', key, 'status')
        if st == '"completed"' or st == '"terminated"' then
          status = -3
        end
      end
    end
  end
  if status == 1 then
    if mode ~= 'r' and npairs > 0 then
      redis.call('HSET', key, unpack(ARGV, p0, e0 - 1))
    end
    if mode == 'v' then
      redis.call('HSET', key, 'version', tonumber(expected) + 1)
    end
    if nevents > 0 then
      extra = seq + 1
      for j = e0, e0 + nevents - 1 do
        seq = seq + 1
        blobs[#blobs + 1] = ARGV[j]
      end
      if cmdkey then
        redis.call('HSET', cmdkey, sid, extra)
        redis.call('EXPIRE', cmdkey, ttl)
      end
    end
  end
  out[#out + 1] = status
  out[#out + 1] = extra
end
if #blobs > 0 then
  redis.call('SET', KEYS[1], seq)
  local data = table.concat(blobs)
  redis.call('XADD', KEYS[2], first .. '-*', 't', ARGV[2], 'n', #blobs, 'd', data)
  redis.call('PUBLISH', ARGV[1], first .. ':' .. data)
end
return out
