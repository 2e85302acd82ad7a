-- How much of one exam's outbox is not yet in SQL.
--
-- KEYS[1] exam seq counter, KEYS[2] exam outbox (stream), KEYS[3] exam drain state (hash)
--
-- Returns {events not yet drained, time the oldest undrained entry was appended or ''}.

local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local drained = tonumber(redis.call('HGET', KEYS[3], 'seq') or '0')
local last = redis.call('HGET', KEYS[3], 'id')
local start = '-'
if last then
  start = '(' .. last
end
local first = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', 1)
local at = ''
local entries = 0
if #first > 0 then
  local fields = first[1][2]
  for k = 1, #fields, 2 do
    if fields[k] == 't' then
      at = fields[k + 1]
    end
  end
  entries = 1
end
local behind = current - drained
if behind < 0 then
  behind = 0
end
if behind == 0 and entries > 0 then
  behind = 1  -- audit rows only
end
return {behind, at}
