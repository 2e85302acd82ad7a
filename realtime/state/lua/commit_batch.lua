-- Many commits of one exam, atomically each, in one call: compare-and-set and/or guard check
-- per session, the exam's next sequence numbers for the events of those that apply, then ONE
-- outbox entry and ONE published message for all of them. Doing it in one script keeps seq
-- order, outbox order and publish order identical for every reader.
--
-- KEYS[1] exam seq counter, KEYS[2] exam outbox (stream). The session hashes and command keys
-- are built from prefixes: every key of one exam shares its hash tag, so they live in the
-- same slot (declaring 5,000 keys would cost more than the script itself).
-- ARGV[1] pub/sub channel, ARGV[2] now (seconds), ARGV[3] command key TTL (s),
-- ARGV[4] session key prefix, ARGV[5] command key prefix, ARGV[6] the commits, msgpack: ONE
-- flat array, per commit: session id, mode ('v' compare-and-set, and the guard if any |
-- 'g' guarded | 'r' record only | 'c' check only: the version must still be the expected
-- one, nothing is written | 'n' count: the exam must still have exactly `expected`
-- sessions, nothing is written; its session id is ''), expected version (string), command
-- id ('' none), live only (0/1), fresh (0/1: with a command id, refused if that command id
-- is known at all), then three counted lists: the number of guard items and the guard's
-- field/value items, the number of change items and the change field/value items (values
-- JSON-encoded), the number of event blobs and the blobs (msgpack, without seq). (Flat:
-- unpacking 5,000 commits as nested arrays cost Redis twice the CPU.)
-- ARGV[7] the caller's token for this call (it recognises its own message by it),
-- ARGV[8] 's' on a Redis Cluster (SPUBLISH: the channel is in the exam's slot, heard on the
-- slot's nodes only), 'p' on a single Redis (PUBLISH), ARGV[9] kept answer key prefix,
-- ARGV[10] the exam's set of session ids.
--
-- Returns {status, seq} per commit: 1 applied (seq = first event's seq, 0 if no event),
-- 0 no such session, -1 version conflict (or count differs), -2 command already applied
-- (seq = its first seq), -3 guard failed, -4 a fresh commit of a command id that is known
-- (some session applied it, or its answer is kept): none of that command's commits in this
-- call applies. The outbox entry id is "<first seq>-*"; the message
-- "<token>:<first seq>:<blobs>".

local ttl = tonumber(ARGV[3])
local flat = cmsgpack.unpack(ARGV[6])
local starts = {} -- where each commit begins in `flat`
do
  local i, n = 1, #flat
  while i <= n do
    starts[#starts + 1] = i
    local j = i + 6
    j = j + 1 + flat[j] -- guard items
    j = j + 1 + flat[j] -- change items
    i = j + 1 + flat[j] -- event blobs
  end
end
-- Touch every key before writing any: on a cluster slot half-way through a migration, a key
-- that already left makes Redis abort the script, and it must abort here, before any write.
-- (Each command key once: a bulk command names the same one in every commit.)
-- A fresh commit (decided on a process's replica without reading the command's kept answer)
-- of a command id this exam knows is a retry: all of that command's commits here are refused
-- (checked before any of them is applied), and the caller reads the kept answer.
local exists = {}
local cmdkeys = {}
local known = {}
local counted = false
for i, at in ipairs(starts) do
  local cmd = flat[at + 3]
  if flat[at + 1] ~= 'n' then
    exists[i] = redis.call('EXISTS', ARGV[4] .. flat[at]) == 1
  elseif not counted then -- the exam's set of sessions, read by a count after writes
    redis.call('EXISTS', ARGV[10])
    counted = true
  end
  if cmd ~= '' and cmdkeys[cmd] == nil then
    local applied = redis.call('EXISTS', ARGV[5] .. cmd) == 1
    local kept = redis.call('EXISTS', ARGV[9] .. cmd) == 1
    cmdkeys[cmd] = {}
    known[cmd] = applied or kept
  end
end
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local first = seq + 1
local blobs = {}
local out = {}
for i, at in ipairs(starts) do
  local sid, mode, expected, cmd = flat[at], flat[at + 1], flat[at + 2], flat[at + 3]
  local live_only, fresh = flat[at + 4] == 1, flat[at + 5] == 1
  local g = at + 6 -- guard items flat[g + 1 .. g + flat[g]], then the changes', the events'
  local p = g + 1 + flat[g]
  local e = p + 1 + flat[p]
  local key = ARGV[4] .. sid
  local status, extra = 1, 0
  local recorded = nil
  if cmd ~= '' and fresh and known[cmd] then
    status = -4
  elseif mode == 'n' then
    if redis.call('SCARD', ARGV[10]) ~= tonumber(expected) then
      status = -1
    end
  elseif not exists[i] then
    status = 0
  elseif mode == 'c' then
    if redis.call('HGET', key, 'version') ~= expected then
      status = -1
    end
  else
    if cmd ~= '' then
      -- applied by an earlier call (the hash), or earlier in this one (not written yet)
      recorded = cmdkeys[cmd]
      local prev = recorded[sid] or redis.call('HGET', ARGV[5] .. cmd, sid)
      if prev then
        status, extra = -2, tonumber(prev)
      end
    end
    if status == 1 and mode == 'v' then
      if redis.call('HGET', key, 'version') ~= expected then
        status = -1
      end
    end
    if status == 1 and mode ~= 'r' then
      for j = g + 1, g + flat[g], 2 do
        if redis.call('HGET', key, flat[j]) ~= flat[j + 1] then
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
    if mode == 'v' then
      redis.call('HSET', key, 'version', tonumber(expected) + 1, unpack(flat, p + 1, p + flat[p]))
    elseif mode ~= 'r' and flat[p] > 0 then
      redis.call('HSET', key, unpack(flat, p + 1, p + flat[p]))
    end
    if flat[e] > 0 then
      extra = seq + 1
      for j = e + 1, e + flat[e] do
        seq = seq + 1
        blobs[#blobs + 1] = flat[j]
      end
      if recorded then
        recorded[sid] = extra
      end
    end
  end
  out[#out + 1] = status
  out[#out + 1] = extra
end
-- What each command applied here: an HSET per 1,000 sessions (unpack has a limit) and one
-- EXPIRE per command key, instead of both per session.
for cmd, recorded in pairs(cmdkeys) do
  local args = {}
  for sid, at in pairs(recorded) do
    args[#args + 1] = sid
    args[#args + 1] = at
    if #args >= 2000 then
      redis.call('HSET', ARGV[5] .. cmd, unpack(args))
      args = {}
    end
  end
  if #args > 0 then
    redis.call('HSET', ARGV[5] .. cmd, unpack(args))
  end
  if next(recorded) ~= nil then
    redis.call('EXPIRE', ARGV[5] .. cmd, ttl)
  end
end
if #blobs > 0 then
  redis.call('SET', KEYS[1], seq)
  local data = table.concat(blobs)
  redis.call('XADD', KEYS[2], first .. '-*', 't', ARGV[2], 'n', #blobs, 'd', data)
  -- pcall: the writes above are done and a script is not rolled back, so a refused publish
  -- must not turn an applied change into an error; listeners read it back from the outbox.
  local publish = 'PUBLISH'
  if ARGV[8] == 's' then
    publish = 'SPUBLISH'
  end
  redis.pcall(publish, ARGV[1], ARGV[7] .. ':' .. first .. ':' .. data)
end
return out
