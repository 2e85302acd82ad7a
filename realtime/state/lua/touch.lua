-- Heartbeat: refresh last_seen of the sessions of one exam that these connections still hold;
-- never creates a half session. One call per exam (the keys share its hash tag).
-- KEYS[1]: the exam's seq counter (declares the slot); ARGV[1]: session key prefix, ARGV[2]:
-- JSON-encoded time, ARGV[3]: msgpack [session id, JSON-encoded conn_id, ...].
-- Returns, per holder, 1 when it still holds the session but it was marked disconnected
-- meanwhile (a sweeper during an outage), else 0.
local holders = cmsgpack.unpack(ARGV[3])
local out = {}
for i = 1, #holders, 2 do
  local key = ARGV[1] .. holders[i]
  local lost = 0
  if redis.call('HGET', key, 'conn_id') == holders[i + 1] then
    if redis.call('HGET', key, 'connected') == 'true' then
      redis.call('HSET', key, 'last_seen', ARGV[2])
    else
      local status = redis.call('HGET', key, 'status')
      if status ~= '"completed"' and status ~= '"terminated"' then lost = 1 end
    end
  end
  out[#out + 1] = lost
end
return out
