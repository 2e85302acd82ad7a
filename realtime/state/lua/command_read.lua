-- What targeted staff commands of one exam read before deciding, for many commands in one call:
-- per command, its kept answer (idempotent retries), the sessions that already applied it and
-- the targeted sessions (only the fields asked for).
--
-- KEYS[1] the exam's set of session ids (routes the call to the exam's slot; not read). The
-- other keys are built from prefixes: every key of one exam shares its hash tag (same slot).
-- ARGV[1] session key prefix, ARGV[2] kept answer key prefix, ARGV[3] applied-command key
-- prefix, ARGV[4] a key of the exam that never exists, ARGV[5] n = how many fields,
-- ARGV[6 .. 5+n] the fields (n = 0: every field), then per command: its id ('' none: nothing
-- kept to read), m = how many sessions, m session ids.
--
-- A session read as missing is confirmed missing (EXISTS of it with ARGV[4]): mid-migration
-- of a Redis Cluster slot, on the master importing it, a session not moved yet reads as
-- missing, and that EXISTS of two keys, one missing, is refused there (Redis's TRYAGAIN
-- case): the call fails (the caller reads key by key, or answers "unavailable") instead of
-- telling that an existing session does not exist. At rest it answers 0. (The command's keys
-- are not confirmed: the commit that follows checks them again, atomically with its writes.)
--
-- Returns ONE JSON array, an element per command: [answer, applied, sessions], where answer is
-- the kept JSON answer or null, applied an object {session id: first seq} (null without a
-- command id), sessions an array in the order asked: null for an unknown session, else with
-- fields an array of their values in that order (null where missing), without fields an
-- object. The stored values are JSON already: the script only joins them, the caller decodes
-- everything in one call.

local n = tonumber(ARGV[5])
local names = {}
for i = 1, n do
  names[i] = ARGV[5 + i]
end
local out = {}
local k = 6 + n
while k <= #ARGV do
  local cmd, m = ARGV[k], tonumber(ARGV[k + 1])
  k = k + 2
  local answer, applied = 'null', 'null'
  if cmd ~= '' then
    answer = redis.call('GET', ARGV[2] .. cmd) or 'null'
    local flat = redis.call('HGETALL', ARGV[3] .. cmd)
    local parts = {}
    for j = 1, #flat, 2 do
      parts[#parts + 1] = cjson.encode(flat[j]) .. ':' .. flat[j + 1]
    end
    applied = '{' .. table.concat(parts, ',') .. '}'
  end
  local rows = {}
  for j = k, k + m - 1 do
    local key = ARGV[1] .. ARGV[j]
    if n > 0 then
      local values = redis.call('HMGET', key, unpack(names))
      local found = false
      for i = 1, n do
        if values[i] then
          found = true
        else
          values[i] = 'null'
        end
      end
      if found then
        rows[#rows + 1] = '[' .. table.concat(values, ',') .. ']'
      else
        redis.call('EXISTS', key, ARGV[4])
        rows[#rows + 1] = 'null'
      end
    else
      local fields = redis.call('HGETALL', key)
      if #fields > 0 then
        local parts = {}
        for f = 1, #fields, 2 do
          parts[#parts + 1] = '"' .. fields[f] .. '":' .. fields[f + 1]
        end
        rows[#rows + 1] = '{' .. table.concat(parts, ',') .. '}'
      else
        redis.call('EXISTS', key, ARGV[4])
        rows[#rows + 1] = 'null'
      end
    end
  end
  k = k + m
  out[#out + 1] = '[' .. answer .. ',' .. applied .. ',[' .. table.concat(rows, ',') .. ']]'
end
return '[' .. table.concat(out, ',') .. ']'
