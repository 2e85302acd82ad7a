-- Count an exam's candidate drops in a sliding window and raise ONE drop alert when there are
-- enough. Every process that hears a `disconnected` event may report it: a drop is a member
-- named by its seq, so reporting it twice counts it once, and only the call that finds no
-- active alert and enough drops raises one (atomically: the alert key is the lock).
--
-- KEYS[1] the exam's recent drops (sorted set: member "<seq>:<session>:<group>", score = at),
-- KEYS[2] the exam's active alert (string, JSON, expires)
-- ARGV[1] window (s), ARGV[2] threshold (drops; < 1 = off), ARGV[3] how long an alert stays
-- active after the last drop (s), ARGV[4] exam id, ARGV[5] max sessions listed in an alert,
-- then (at, member) pairs.
--
-- Returns the alert's JSON when this call raised it, else nil.

local window = tonumber(ARGV[1])
local threshold = tonumber(ARGV[2])
local active = tonumber(ARGV[3])
local newest = 0
for i = 6, #ARGV, 2 do
  local at = tonumber(ARGV[i])
  redis.call('ZADD', KEYS[1], at, ARGV[i + 1])
  if at > newest then newest = at end
end
local top = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #top > 0 and tonumber(top[2]) > newest then newest = tonumber(top[2]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. tostring(newest - window))
redis.call('EXPIRE', KEYS[1], math.ceil(window) + 60)
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('EXPIRE', KEYS[2], active) -- still dropping: the same alert stays active
  return nil
end
if threshold < 1 then return nil end
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
if #members / 2 < threshold then return nil end
local count, sessions, groups, seen = 0, {}, {}, {}
local first, last, last_seq, trigger = nil, 0, -1, ''
for i = 1, #members, 2 do
  local seq, sid, group = string.match(members[i], '^(%d+):([^:]*):(.*)$')
  local at = tonumber(members[i + 1])
  if first == nil or at < first then first = at end
  if at > last then last = at end
  if tonumber(seq) > last_seq then last_seq, trigger = tonumber(seq), sid end
  if not seen[sid] then -- candidates, not drops: one flapping connection is not a hall
    seen[sid] = true
    count = count + 1
    if #sessions < tonumber(ARGV[5]) then sessions[#sessions + 1] = sid end
    groups[group] = (groups[group] or 0) + 1
  end
end
if count < threshold then return nil end
local names = {}
for g, _ in pairs(groups) do names[#names + 1] = g end
local alert = {
  id = ARGV[4] .. ':drop:' .. last_seq,
  exam_id = ARGV[4],
  trigger_seq = last_seq,
  session_id = trigger,
  count = count,
  window_seconds = window,
  first_at = first,
  last_at = last,
  raised_at = newest,
  sessions = sessions,
  groups = groups,
  group = (#names == 1) and names[1] or '',
}
local json = cjson.encode(alert)
redis.call('SET', KEYS[2], json, 'EX', active)
return json
