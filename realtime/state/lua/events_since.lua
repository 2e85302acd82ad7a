-- The events of an exam after a seq, from its outbox (which keeps at least the last
-- REALTIME_EVENT_LOG_SIZE events, and everything not yet written to SQL).
--
-- KEYS[1] exam seq counter, KEYS[2] exam outbox (stream); ARGV[1] the seq the reader has.
--
-- Returns {current seq, covered (1/0), first seq, blobs, first seq, blobs, ...}, newest entry
-- first: every event entry whose events reach past ARGV[1]. covered = 0 when the outbox no
-- longer reaches back to ARGV[1] + 1 (the reader needs a snapshot).

local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local after = tonumber(ARGV[1])
if after >= current then
  return {current, 1}
end
local result = {current, 0}
local cursor = '+'
while true do
  local batch = redis.call('XREVRANGE', KEYS[2], cursor, '-', 'COUNT', 200)
  for _, entry in ipairs(batch) do
    local fields = entry[2]
    local data = nil
    for k = 1, #fields, 2 do
      if fields[k] == 'd' then
        data = fields[k + 1]
      end
    end
    local ms = tonumber(string.match(entry[1], '^(%d+)'))
    if data then
      result[#result + 1] = ms
      result[#result + 1] = data
      if ms <= after + 1 then
        result[2] = 1
        return result
      end
    end
    cursor = '(' .. entry[1]
  end
  if #batch < 200 then
    return result
  end
end
