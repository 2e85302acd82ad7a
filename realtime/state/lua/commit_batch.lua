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
-- JSON-encoded), the number of events and each one's length in ARGV[11]. (Flat: unpacking
-- 5,000 commits as nested arrays cost Redis twice the CPU.)
-- ARGV[7] the caller's token for this call (it recognises its own message by it),
-- ARGV[8] 's' on a Redis Cluster (SPUBLISH: the channel is in the exam's slot, heard on the
-- slot's nodes only), 'p' on a single Redis (PUBLISH), ARGV[9] kept answer key prefix,
-- ARGV[10] the exam's set of session ids, ARGV[11] every commit's events (msgpack, without
-- seq) back to back, in the order of the commits, ARGV[12] a key of the exam that never
-- exists (see `confirm_missing`), ARGV[13] command claim key prefix, ARGV[14] the claim of
-- this call ('' none): see "Claims" below.
--
-- Returns {status, seq} per commit: 1 applied (seq = first event's seq, 0 if no event),
-- 0 no such session, -1 version conflict (or count differs), -2 command already applied
-- (seq = its first seq), -3 guard failed, -4 a fresh commit of a command id that is known
-- (some session applied it, its answer is kept, or another call claimed it): none of that
-- command's commits in this call applies. The outbox entry id is "<first seq>-*"; the
-- message "<token>:<first seq>:<blobs>".
--
-- Claims. A process commits a big call of one exam in chunks, one call of this script each
-- (`RedisStore.commit`), all with the same claim (ARGV[14]). A fresh command's second chunk
-- would find the id known (the first chunk applied it) and refuse itself; so the first chunk
-- that is not refused writes the claim (`<claim prefix><command id>` = ARGV[14], TTL as the
-- command's), and a fresh commit whose call brings that very claim is refused only if the
-- command's answer was kept meanwhile (a concurrent retry finished the command: the caller
-- then answers the read way). Any other fresh commit of the id (another call: a retry, after
-- a kill between chunks too) finds the claim and is refused, as it would find the sessions
-- the first chunks applied, and goes the read way, which finishes the command.
--
-- What it costs Redis (docs/performance.md, "Eighth session: the commit script's cost"): per
-- session one read (HGET or HMGET of the fields its checks compare, which also tells that
-- the session exists) and, if it applies, one HSET; the applied-command hash only if it
-- existed before the call. The events arrive joined: when every commit with events applies
-- (a bulk command, a batch of acks) ARGV[11] is the outbox entry as it is, and only the
-- events of commits that fail are cut out. Before: EXISTS, then HGETs of the command hash,
-- the version and each guard field, and 5,000 event strings unpacked and joined again
-- (a "pause all" cost Redis 1.23x the instructions). Most of what is left is Redis's HSET:
-- finding each field in the session's listpack (~45 fields) is a linear scan.

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
    i = j + 1 + flat[j] -- event lengths
  end
end

-- The fields a commit's checks compare, in this order: 'v' the version, its guard's fields,
-- the status (live only); 'g' its guard's fields, the status (live only); 'c' the version;
-- 'r' none (only whether the session exists).
local VERSION = {'version'}
local ONE, LIVE = {}, {} -- a guard's one field -> its fields to read
local function fields(at)
  local mode = flat[at + 1]
  local g = at + 6
  if mode == 'c' or (mode == 'v' and flat[g] == 0 and flat[at + 4] ~= 1) then
    return VERSION
  end
  if mode == 'g' and flat[g] == 2 then -- one guard field (an ack's, a report's): shared
    local memo = flat[at + 4] == 1 and LIVE or ONE
    local names = memo[flat[g + 1]]
    if names == nil then
      names = {flat[g + 1]}
      if flat[at + 4] == 1 then
        names[2] = 'status'
      end
      memo[flat[g + 1]] = names
    end
    return names
  end
  local names = {}
  if mode == 'v' then
    names[1] = 'version'
  end
  if mode == 'v' or mode == 'g' then
    for j = g + 1, g + flat[g], 2 do
      names[#names + 1] = flat[j]
    end
    if flat[at + 4] == 1 then
      names[#names + 1] = 'status'
    end
  end
  return names
end

-- A key read as missing is missing, unless the exam's slot is half-way through a Redis Cluster
-- migration: a key that has not moved yet reads as missing on the master importing the slot,
-- where this call runs once the seq counter and the outbox (its declared keys) have moved
-- (the client followed ASK). A session that exists must not be reported unknown, nor a
-- command applied twice, so a key read as missing is confirmed by EXISTS of it together with
-- ARGV[12], a key that never exists: a command of several keys with one missing is refused
-- while the slot is imported (Redis's TRYAGAIN case) or migrated away (ASK), before any write
-- of this call (every key is read before the first write). On a slot at rest (and on a single
-- Redis) it answers 0, and costs nothing unless a key is missing. Found keys need no check:
-- a key is moved whole, and one found here is the only copy. (On the master the slot leaves,
-- reading a key already gone is refused by Redis itself.)
local function confirm_missing(key)
  redis.call('EXISTS', key, ARGV[12])
end

-- Those fields of a session: one value (HGET) or a table of them (HMGET).
local function read(key, names)
  if #names == 1 then
    return redis.call('HGET', key, names[1])
  end
  return redis.call('HMGET', key, unpack(names))
end

-- Read every key before writing any: on a cluster slot half-way through a migration, a key
-- that already left makes Redis abort the script, and one that has not arrived yet is
-- confirmed missing (`confirm_missing`): either aborts it here, before any write.
-- One call per session reads the fields its checks compare (a session always has a version,
-- so a value read also says that it exists; EXISTS only when none is there, or nothing is
-- compared), and the main loop reads no more of it unless a commit before it in this call
-- wrote it. (Each command's keys once: a bulk command names the same one in every commit.)
-- A fresh commit (decided on a process's replica without reading the command's kept answer)
-- of a command id this exam knows is a retry: all of that command's commits here are refused
-- (checked before any of them is applied), and the caller reads the kept answer.
local hashes, names, values, exists = {}, {}, {}, {}
local cmdkeys = {} -- per command id: session id -> first seq, applied in this call
local applied = {} -- per command id: whether its hash exists (applied by an earlier call)
local known = {}
local kept = {} -- per command id: whether its answer is kept
local claimed = {} -- per command id of fresh commits: its claim (false: none), read once
local claim = ARGV[14]
local members = nil -- the exam's set of sessions counted, for 'n': read here, before any write
for i, at in ipairs(starts) do
  local cmd = flat[at + 3]
  if flat[at + 1] == 'n' then
    if members == nil then
      members = redis.call('SCARD', ARGV[10])
      if members == 0 then
        confirm_missing(ARGV[10])
      end
    end
  else
    local key = ARGV[4] .. flat[at]
    hashes[i] = key
    local asked = fields(at)
    local found = false
    if #asked == 1 then
      local got = redis.call('HGET', key, asked[1])
      found = got ~= false
      names[i], values[i] = asked, got
    elseif #asked > 1 then
      local got = redis.call('HMGET', key, unpack(asked))
      for k = 1, #asked do
        if got[k] then
          found = true
          break
        end
      end
      names[i], values[i] = asked, got
    end
    exists[i] = found or redis.call('EXISTS', key) == 1
    if not exists[i] then
      confirm_missing(key)
    end
  end
  if cmd ~= '' and cmdkeys[cmd] == nil then
    -- Both keys in one EXISTS: refused mid-migration unless both are here (see above);
    -- which one exists is asked only if one does (a command's later calls, its retries).
    local count = redis.call('EXISTS', ARGV[5] .. cmd, ARGV[9] .. cmd)
    applied[cmd] = count == 2 or (count == 1 and redis.call('EXISTS', ARGV[5] .. cmd) == 1)
    cmdkeys[cmd] = {}
    known[cmd] = count > 0
    kept[cmd] = count == 2 or (count == 1 and not applied[cmd])
  end
  if cmd ~= '' and flat[at + 5] == 1 and claimed[cmd] == nil then
    -- a fresh commit: a claim of another call makes the id known; this call's own claim
    -- leaves it unknown unless the answer was kept meanwhile (see "Claims")
    local got = redis.call('GET', ARGV[13] .. cmd)
    if got == false then
      confirm_missing(ARGV[13] .. cmd)
    elseif claim ~= '' and got == claim then
      known[cmd] = kept[cmd]
    else
      known[cmd] = true
    end
    claimed[cmd] = got
  end
end

local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local first = seq + 1
local count = 0 -- events applied
local offset = 1 -- where the next commit's events begin in ARGV[11]
local runs = {} -- the applied events' byte ranges in ARGV[11]: from, to, from, to, ...
local out = {}
local written = {} -- session keys this call wrote: a later commit of one reads them again
local one = {} -- a single value read, as a table of one
local bumped = {} -- expected version -> the next one, as a string
for i, at in ipairs(starts) do
  local sid, mode, expected, cmd = flat[at], flat[at + 1], flat[at + 2], flat[at + 3]
  local live_only, fresh = flat[at + 4] == 1, flat[at + 5] == 1
  local g = at + 6 -- guard items flat[g + 1 .. g + flat[g]], then the changes', the events'
  local p = g + 1 + flat[g]
  local e = p + 1 + flat[p]
  local size = 0 -- of this commit's events in ARGV[11]
  for j = e + 1, e + flat[e] do
    size = size + flat[j]
  end
  local key = hashes[i]
  local status, extra = 1, 0
  local recorded = nil
  if cmd ~= '' and fresh and known[cmd] then
    status = -4
  elseif mode == 'n' then
    if members ~= tonumber(expected) then
      status = -1
    end
  elseif not exists[i] then
    status = 0
  else
    local asked = names[i]
    local got = values[i]
    if asked and written[key] then
      got = read(key, asked)
    end
    if asked and #asked == 1 then
      one[1] = got
      got = one
    end
    if mode == 'c' then
      if got[1] ~= expected then
        status = -1
      end
    else
      if cmd ~= '' then
        -- applied by an earlier call (the hash, read only if it exists), or earlier in this
        -- one (not written yet)
        recorded = cmdkeys[cmd]
        local prev = recorded[sid]
        if not prev and applied[cmd] then
          prev = redis.call('HGET', ARGV[5] .. cmd, sid)
        end
        if prev then
          status, extra = -2, tonumber(prev)
        end
      end
      local k = 1 -- the next value of `got` to compare
      if mode == 'v' then
        if status == 1 and got[1] ~= expected then
          status = -1
        end
        k = 2
      end
      if status == 1 and mode ~= 'r' then
        for j = g + 1, g + flat[g], 2 do
          if got[k] ~= flat[j + 1] then
            status = -3
            break
          end
          k = k + 1
        end
        if status == 1 and live_only then
          local st = got[k]
          if st == '"completed"' or st == '"terminated"' then
            status = -3
          end
        end
      end
    end
  end
  if status == 1 then
    if mode == 'v' then
      local version = bumped[expected] -- formatted once per version, as Redis formats numbers
      if version == nil then
        version = string.format('%.17g', tonumber(expected) + 1)
        bumped[expected] = version
      end
      redis.call('HSET', key, 'version', version, unpack(flat, p + 1, p + flat[p]))
      written[key] = true
    elseif mode ~= 'r' and flat[p] > 0 then
      redis.call('HSET', key, unpack(flat, p + 1, p + flat[p]))
      written[key] = true
    end
    if flat[e] > 0 then
      extra = seq + 1
      seq = seq + flat[e]
      count = count + flat[e]
      if runs[#runs] == offset - 1 then
        runs[#runs] = offset + size - 1
      else
        runs[#runs + 1] = offset
        runs[#runs + 1] = offset + size - 1
      end
      if recorded then
        recorded[sid] = extra
      end
    end
  end
  offset = offset + size
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
-- The claims of this call's chunks: written by the first chunk of a fresh command that is
-- not refused, whatever it applied (a chunk of checks alone claims the command too).
if claim ~= '' then
  for cmd, got in pairs(claimed) do
    if not known[cmd] and got ~= claim then
      redis.call('SET', ARGV[13] .. cmd, claim, 'EX', ttl)
    end
  end
end
if count > 0 then
  redis.call('SET', KEYS[1], seq)
  local data = ARGV[11]
  if runs[1] ~= 1 or runs[2] ~= #data then -- some commit's events are not applied: cut out
    local parts = {}
    for r = 1, #runs, 2 do
      parts[#parts + 1] = string.sub(data, runs[r], runs[r + 1])
    end
    data = table.concat(parts)
  end
  redis.call('XADD', KEYS[2], first .. '-*', 't', ARGV[2], 'n', count, 'd', data)
  -- pcall: the writes above are done and a script is not rolled back, so a refused publish
  -- must not turn an applied change into an error; listeners read it back from the outbox.
  local publish = 'PUBLISH'
  if ARGV[8] == 's' then
    publish = 'SPUBLISH'
  end
  redis.pcall(publish, ARGV[1], ARGV[7] .. ':' .. first .. ':' .. data)
end
return out
