-- Outbox entries are in SQL: acknowledge them, remember how far the exam is drained, and trim
-- the stream behind both what is drained and the last `log size` events (the gap-recovery log).
--
-- KEYS[1] exam outbox (stream), KEYS[2] exam seq counter, KEYS[3] exam drain state (hash)
-- ARGV[1] log size, ARGV[2] highest seq now in SQL, ARGV[3] the last entry id acknowledged,
-- ARGV[4 ..] the entry ids.

local function parse(id)
  local ms, sq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(sq)
end
local function less(ams, asq, bms, bsq)
  return ams < bms or (ams == bms and asq < bsq)
end

redis.call('XACK', KEYS[1], 'drain', unpack(ARGV, 4))
local drained = tonumber(redis.call('HGET', KEYS[3], 'seq') or '0')
if tonumber(ARGV[2]) > drained then
  redis.call('HSET', KEYS[3], 'seq', ARGV[2])
end
redis.call('HSET', KEYS[3], 'id', ARGV[3])

local current = tonumber(redis.call('GET', KEYS[2]) or '0')
local ams, asq = parse(ARGV[3])
local min_ms, min_sq = ams, asq + 1
-- The log keeps whole entries: from the event entry holding seq `keep` on.
local keep = current - tonumber(ARGV[1]) + 1
local kms = 0
if keep > 0 then
  for _, entry in ipairs(redis.call('XREVRANGE', KEYS[1], keep, '-', 'COUNT', 16)) do
    local fields = entry[2]
    local events = false
    for k = 1, #fields, 2 do
      if fields[k] == 'd' then
        events = true
      end
    end
    if events then
      kms = tonumber(string.match(entry[1], '^(%d+)'))
      break
    end
  end
end
if kms < min_ms then
  min_ms, min_sq = kms, 0
end
local pending = redis.call('XPENDING', KEYS[1], 'drain')
if tonumber(pending[1]) > 0 then
  local pms, psq = parse(pending[2])
  if less(pms, psq, min_ms, min_sq) then
    min_ms, min_sq = pms, psq
  end
end
if min_ms > 0 then
  redis.call('XTRIM', KEYS[1], 'MINID', min_ms .. '-' .. min_sq)
end
return 1
