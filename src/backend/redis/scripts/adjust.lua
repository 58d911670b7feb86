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
-- A log window keeps its numbers in step with its log, as acquire.lua does.
-- Returns the number of leases released (0 when it had expired already).

local LOGS = 6

-- Counts `actual` units nobody counted yet in log window w (its field `id`), from now (or its newest
-- entry) on.
local function count_late(state, id, w, now, actual)
  push(w, max(now, w.last_at), actual)
  -- The log may be new, with less time than acquire.lua's `expiry` promised: it is set again.
  local _, line, reborn, members, members_until, restoring = limit_state(call('HGET', state, 'limit'))
  call('HSET', state, id, log_packed(w), 'limit', limit_packed(0, line, reborn, members, members_until, restoring))
  keep(w.log, w.last_at - now + w.span)
  keep(state, w.last_at - now + w.span)
end

-- Replaces the units of the entry `receipt` names in log window w by `counted` less, `actual` more,
-- if it is still the entry of the admission made at `admitted` (see below). Returns whether it did.
local function correct(w, receipt, admitted, counted, actual)
  local index = receipt - w.seq - 1
  if index < 0 or index >= w.length then return false end
  local text = call('LINDEX', w.log, index)
  if not text then return false end
  local at, cost = parse(text)
  -- Its entry is dated at its admission, or later when later admissions merged into it.
  if at < admitted then return false end
  local corrected = max(cost + actual - counted, 0)
  w.sum = w.sum + corrected - cost
  local newest = index == w.length - 1
  if not newest or corrected > 0 then
    call('LSET', w.log, index, entry(at, corrected))
    if newest then w.last_cost = corrected end
  else
    -- The newest entry, now empty, goes; the one before it is the newest.
    call('RPOP', w.log)
    w.length = w.length - 1
    if w.length == 0 then
      w.head, w.last_at, w.last_cost = 0, 0, 0
    else
      w.last_at, w.last_cost = parse(call('LINDEX', w.log, -1))
    end
  end
  return true
end

return function(KEYS, ARGV)
  local state, lease_key = KEYS[1], KEYS[2]
  local admitted, n = to_number(ARGV[2]), to_number(ARGV[3])
  local now = redis_now()

  for i = 1, n do
    local at_arg = 3 + (i - 1) * 7
    local id, kind, span, base = ARGV[at_arg + 1], ARGV[at_arg + 2], to_number(ARGV[at_arg + 3]), to_number(ARGV[at_arg + 4])
    local receipt, counted, actual = to_number(ARGV[at_arg + 5]), to_number(ARGV[at_arg + 6]), to_number(ARGV[at_arg + 7])
    if counted ~= actual then
      if kind == 'gcra' then
        local tat = read_gcra(call('HGET', state, id))
        if actual > counted then
          -- Tokens nobody estimated were spent anyway: the server counted them, so do we.
          call('HSET', state, id, gcra_packed(gcra_charge(tat, now, actual - counted, span)))
        elseif receipt ~= 0 and tat == receipt then
          -- A refund only while nothing was admitted after it: later admissions relied on this TAT.
          call('HSET', state, id, gcra_packed(tat - (counted - actual) * base))
        end
      else
        local w = {log = KEYS[LOGS + i], span = span}
        read_log(w, call('HGET', state, id), now)
        -- A receipt names its entry by the log's sequence number, which starts again from Redis's
        -- clock once the limit's keys expire (see common.lua's read_log). They outlive every entry's
        -- window by a second, so while this admission is in its window the numbering is still the one
        -- that named it. Past it, its entry no longer counts (it left the window, or its number now
        -- names a newer admission's): nothing to correct.
        if counted == 0 then
          count_late(state, id, w, now, actual)
        elseif now < admitted + span and correct(w, receipt, admitted, counted, actual) then
          call('HSET', state, id, log_packed(w))
        end
      end
    end
  end

  if ARGV[1] ~= '' then
    return call('ZREM', lease_key, ARGV[1])
  end
  return 0
end
