-- Corrects an admission after the fact and returns its lease: settles the real token count (refund or
-- charge), gives back a reservation whose waiter gave up (actual = 0), or only releases the lease.
-- Same keys as acquire.lua (the member set, the withdrawals and the line unused); common.lua first.
--
-- ARGV[1]  lease id to release ("" for none)
-- ARGV[2]  the admission's instant (us, Redis's clock: acquire.lua's `at`)
-- ARGV[3]  number of windows, then seven values per window:
--          id, kind ("log" | "gcra"), span (log: window length; gcra: one unit's interval in force), base
--          (gcra: the configured interval), receipt (from acquire.lua; 0 when that window counted
--          nothing), counted (units counted so far), actual (units it really took)
-- A GCRA window applies the core's pure functions (src/core/gcra.rs): `charge` to count more (at the
-- interval in force), `give_back` to count less (at the configured one: never more than was added).
-- Returns the number of leases released (0 when it had expired already).

local state, lease_key = KEYS[1], KEYS[2]
local admitted, n = tonumber(ARGV[2]), tonumber(ARGV[3])
local now = redis_now()
local LOGS = 6

for i = 1, n do
  local at_arg = 3 + (i - 1) * 7
  local id, kind, span, base = ARGV[at_arg + 1], ARGV[at_arg + 2], tonumber(ARGV[at_arg + 3]), tonumber(ARGV[at_arg + 4])
  local receipt, counted, actual = tonumber(ARGV[at_arg + 5]), tonumber(ARGV[at_arg + 6]), tonumber(ARGV[at_arg + 7])
  if counted ~= actual then
    if kind == 'gcra' then
      local field = 'tat:' .. id
      local tat = tonumber(redis.call('HGET', state, field) or '0')
      if actual > counted then
        -- Tokens nobody estimated were spent anyway: the server counted them, so do we.
        redis.call('HSET', state, field, gcra_charge(tat, now, actual - counted, span))
      elseif receipt ~= 0 and tat == receipt then
        -- A refund only while nothing was admitted after it: later admissions relied on this TAT.
        redis.call('HSET', state, field, tat - (counted - actual) * base)
      end
    elseif counted == 0 then
      -- Nothing was counted here to correct: count the real cost from now (or the last entry) on.
      local log = KEYS[LOGS + i]
      local last = redis.call('LINDEX', log, -1)
      local at = last and math.max(now, (parse(last))) or now
      redis.call('RPUSH', log, string.format('%d:%d', at, actual))
      redis.call('HINCRBY', state, 'sum:' .. id, actual)
      keep(log, at - now + span)
      keep(state, at - now + span)
      -- The log may be new, with less time than acquire.lua's `expiry` promised: it sets it again.
      redis.call('HDEL', state, 'expiry')
    elseif now < admitted + span then
      -- A receipt names its entry by the log's sequence number, which starts again from 0 once the
      -- limit's keys expire. They outlive every entry's window by a second, so while this admission is
      -- in its window the numbering is still the one that named it. Past it, its entry no longer
      -- counts (it left the window, or its number now names a newer admission's): nothing to correct.
      local log = KEYS[LOGS + i]
      local seq = tonumber(redis.call('HGET', state, 'seq:' .. id) or '0')
      local index = receipt - seq - 1
      local entry = index >= 0 and redis.call('LINDEX', log, index) or false
      local at, cost
      if entry then at, cost = parse(entry) end
      -- Its entry is dated at its admission, or later when later admissions merged into it.
      if entry and at >= admitted then
        local corrected = math.max(cost + actual - counted, 0)
        redis.call('LSET', log, index, string.format('%d:%d', at, corrected))
        redis.call('HINCRBY', state, 'sum:' .. id, corrected - cost)
        if corrected == 0 and index == redis.call('LLEN', log) - 1 then
          redis.call('RPOP', log)
        end
      end
    end
  end
end

if ARGV[1] ~= '' then
  return redis.call('ZREM', lease_key, ARGV[1])
end
return 0
