-- Outbox entries are in SQL: acknowledge them, remember how far the exam is drained, and trim
-- the stream behind both what is drained and the last `log size` events (the gap-recovery log).
--
-- KEYS[1] exam outbox (stream), KEYS[2] exam seq counter, KEYS[3] exam drain state (hash:
-- `seq`, `id`, and `kid`/`klast`, the log's first event entry and its last seq)
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
  -- That entry is remembered (`kid`, its last seq `klast`) until `keep` moves past it: an
  -- entry is read back whole (a bulk command's is megabytes), so it is read once, and then
  -- one entry at a time (the audit entries after it are small).
  local cached = redis.call('HMGET', KEYS[3], 'kid', 'klast')
  if cached[1] and tonumber(cached[2]) >= keep then
    local cms = tonumber(string.match(cached[1], '^(%d+)'))
    if cms <= keep then
      kms = cms
    end
  end
  local cursor = keep .. '-18446744073709551615'
  for _ = 1, (kms > 0 and 0 or 1000) do
    local found = redis.call('XREVRANGE', KEYS[1], cursor, '-', 'COUNT', 1)[1]
    if not found then
      break
    end
    local fields = found[2]
    local count = nil
    for k = 1, #fields, 2 do
      if fields[k] == 'n' then
        count = tonumber(fields[k + 1])
      end
    end
    if count then
      kms = tonumber(string.match(found[1], '^(%d+)'))
      redis.call('HSET', KEYS[3], 'kid', found[1], 'klast', kms + count - 1)
      break
    end
    cursor = '(' .. found[1]
  end
end
if less(kms, 0, min_ms, min_sq) then  -- also when the entry is the last one acknowledged
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
