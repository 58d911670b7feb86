-- Decides one request for one limiter against all its windows and its concurrency lease, all or
-- nothing, on Redis's own clock (TIME, microseconds); common.lua comes first. The client
-- (src/backend/redis/windows.rs) turns each limit into the plain numbers below; the rules of the core's
-- windows are applied there, not here. A GCRA window applies the core's pure functions
-- (src/core/gcra.rs) and nothing else: `schedule` to admit (at the instant every window agreed on),
-- `charge` for a hand-over's debt, `remaining` to peek.
--
-- The fleet's line for concurrency slots: a request that finds no slot it may take joins one line
-- across every process, ordered by priority (higher first), then by arrival (a ticket Redis numbers).
-- A free slot goes to those at the front: a request is admitted only while fewer are ahead of it than
-- slots are free, so nobody overtakes a waiter, whichever process releases the slot or asks first.
-- Waiters ask again until admitted (Redis cannot call them); one that stops asking (its process died)
-- leaves the line once its place expires, and one that gave up is withdrawn by leave.lua (if its ask
-- runs after that, late, it takes nothing).
--
-- The same line orders waits for the rate. A request reserves a later instant only when nobody waits
-- ahead of it and the instant is within HORIZON of now; else it stands in line and asks again. So a
-- reservation, once made, is a turn that has come, and a later arrival of higher priority goes ahead
-- of every waiter of lower priority whose instant is further off than that (a reservation made far
-- ahead would keep it behind first come, first reserved). Only the front reserves, one at a time, in
-- line order; those behind it ask again sooner the closer they stand to the front.
--
-- KEYS[1]      the state hash: "limit" (the limit's own numbers) and per window the field named by its
--              id (its numbers), each packed (see common.lua); "ticket" (the line's last); per instance
--              "handed:<instance>" (the last hand-over applied, see below); per window "recalled:<id>"
--              (what was counted again so far after the state was lost, see below); "stand_ins" (how
--              many lost leases are held by stand-ins, see below)
-- KEYS[2]      the lease sorted set: lease id -> expiry (us)
-- KEYS[3]      the member sorted set: limiter instance id -> expiry (us); how many processes share the limit
-- KEYS[4]      withdrawn lease ids -> expiry (us): decisions their client gave up on (see reclaim.lua)
-- KEYS[5]      the line: waiter -> -priority * 2^32 + ticket (priorities within +-2^20, so the score is
--              exact in a double; a ticket numbers arrivals, modulo 2^32)
-- KEYS[6]      the line's places -> expiry (us): a waiter that stops asking leaves the line
-- KEYS[6 + i]  window i's admission log (exact windows): a list of "at:cost", oldest first
-- ARGV[1]      the numbers, little-endian signed 64-bit integers (struct format '<i8...'), read in one
--              step (each number as text would cost Redis a conversion both ways): mode (0 "peek": count
--              nothing; 1 "now": admit only now; 2 "reserve": admit at a later instant), the longest wait
--              allowed in reserve (us, -1 for any), most leases at once, lease TTL (us), how long an
--              instance counts as a member after renewing (us), the waiter's priority, how long its
--              place is kept unless it asks (us), the number of windows n, the hand-over's number (0:
--              none), the leases this instance saw held in its last answer and until when (us, Redis's
--              clock) they would last unless renewed (0, 0: none); then ten per window: kind (0 "log", 1 "gcra"), limit (log: units per window;
--              gcra: burst), span (log: window length; gcra: one unit's interval in force, wider while
--              the rate is cut), base (gcra: the configured interval, which with the burst makes the
--              tolerance), cost (units this request takes), merge (log: entries closer than this share
--              one), budget (1: a spending limit, which refuses instead of making a request wait), debt
--              (units this instance admitted on its own while Redis was away), and what this instance
--              recalls from its last answer: the units the window counted, and until when (us, Redis's
--              clock) the last of them stays in it (0, 0: nothing)
-- ARGV[2]      lease id to take ("" for none)
-- ARGV[3]      this instance's member id ("" when it renewed its membership lately)
-- ARGV[4]      the waiter asking ("" for a request that will not wait)
-- ARGV[4 + i]  window i's id (names its fields in the state hash)
-- then         with a hand-over: the instance, and the lease ids of the requests it admitted on its own
--              that are still running. A hand-over is applied once, whichever of the instance's
--              decisions carrying it comes first; its leases count from now on.
--
-- Returns, packed as ARGV[1] (one bulk string of little-endian 64-bit integers), status, members,
-- leases, a, b, now, used_1 .. used_n, until_1 .. until_n, ...: members the instances that decided
-- lately, leases those held (when this request asks for one, or peeks), now Redis's clock (us),
-- used_i the units window i counts now (after this decision) and until_i when the last of them leaves
-- it (us; 0 when it counts nothing), and by status:
--   0  admitted at `at`: a = wait (at - now), b = at; then receipt_1 .. receipt_n to settle it with
--   1  passes only after a = wait, more than allowed (b = binding window): nothing counted
--   2  window a can never admit the cost (b = the most it ever can)
--   3  no lease it may take: a = when to look again at the latest (us: the oldest lease's expiry, or
--      its place's), b = its ticket in the line (0: it did not join)
--      (status 5 also when the waiter was withdrawn: it gave up before this ask ran)
--   4  peek: passes after a (b = binding window); then remaining_1 .. remaining_n, the units window i
--      could take now without waiting
--   5  its lease id was withdrawn by its client already: nothing counted
--   6  the request would cross budget window a: nothing counted
--   7  not its turn at the rate yet (others wait ahead of it, or its instant is beyond HORIZON): a =
--      when to ask again (us), b = 1 when it stands in line (0: it did not join: a request that will not
--      wait, refused)


local LOGS, HEADER, PER_WINDOW = 6, 11, 10

-- How far ahead of now a request may reserve its instant at the rate (us); a request that would wait
-- longer stands in the line instead. What a higher-priority arrival may find reserved ahead of it.
local HORIZON = 250000
-- A waiter behind the front asks again after this per place ahead of it (us), within these bounds: it
-- cannot go before those ahead, each of whom takes about one ask. Its place lasts until it is due to
-- ask again and place_ttl more, so a long backlog costs Redis an ask per waiter per LATEST at most, and
-- a dead waiter holds up those behind it for place_ttl past its turn at most.
local STEP, SOONEST, LATEST = 2000, 1000, 10000000

-- Forgets the entries of window w's log that can no longer share a window with `now`, oldest first.
-- The oldest entry's instant says whether any must go without reading the log; those that must are
-- read 16 at a time and cut off in one step.
local function forget(w, now)
  if w.length == 0 or w.head + w.span > now then return end
  local gone, first = 0, 0
  while true do
    local entries = call('LRANGE', w.log, first, first + 15)
    for j = 1, #entries do
      local at, cost = parse(entries[j])
      if at + w.span > now then
        call('LTRIM', w.log, gone, -1)
        w.seq, w.length, w.head, w.dirty = w.seq + gone, w.length - gone, at, true
        return
      end
      gone, w.sum = gone + 1, w.sum - cost
    end
    if #entries < 16 then break end
    first = first + 16
  end
  -- Every entry went. (Or the log expired with its last entry while the state hash, kept longer by a
  -- longer window or a lease, still held its count.) An empty log counts nothing.
  call('DEL', w.log)
  w.sum, w.seq, w.length, w.head, w.last_at, w.last_cost, w.dirty = 0, w.seq + gone, 0, 0, 0, 0, true
end

-- Counts again what window w's client recalls beyond `before`, what was counted again already (see
-- the decision below). Returns how far that now goes, for "recalled:<id>", or nil when it added nothing.
local function recall(w, now, before)
  if w.recall_until <= now or w.recall_used <= 0 then return nil end
  if w.gcra then
    -- The backlog runs until recall_until: what runs past what was counted again so far is added.
    local extra = w.recall_until - max(before, now)
    if extra <= 0 then return nil end
    w.tat, w.dirty = max(w.tat, now) + extra, true
    return w.recall_until
  end
  local extra = w.recall_used - before
  if extra <= 0 then return nil end
  -- Admitted, as far as the window is concerned, when its last unit leaves minus the window.
  w.fresh = push(w, max(w.recall_until - w.span, w.last_at), extra) or w.fresh
  w.dirty = true
  return w.recall_used
end

-- Counts what this instance admitted on its own while Redis was away (its hand-over), from now on.
local function count_debt(w, now)
  if w.gcra then
    w.tat = gcra_charge(w.tat, now, w.debt, w.span)
  else
    w.fresh = push(w, max(now, w.last_at), w.debt) or w.fresh
  end
  w.dirty = true
end

-- The units window w counts now (the GCRA backlog in whole units, rounded up).
local function used(w, now)
  if w.gcra then
    return ceil(max(w.tat - now, 0) / w.span)
  end
  return w.sum
end

-- When the last unit window w counts leaves it (us; 0 when it counts nothing): what its client recalls.
local function clears(w, now)
  if w.gcra then
    return w.tat > now and w.tat or 0
  end
  return (w.sum > 0 and w.length > 0) and w.last_at + w.span or 0
end

-- Gcra::remaining: the whole units a GCRA window could take now without waiting. Its tolerance is the
-- configured one (burst * base) whatever the rate in force.
local function gcra_remaining(w, now)
  if w.tat <= now then return w.limit end
  return floor(max(w.limit * w.base - (w.tat - now), 0) / w.span)
end

-- The earliest instant (not before now) window w admits its cost, or nil and the most it ever can.
-- GCRA: Gcra::schedule's instant; its tolerance never below the request's own span.
local function earliest(w, now)
  if w.cost > w.limit then return nil, w.limit end
  if w.gcra then
    local tat = gcra_charge(w.tat, now, w.cost, w.span)
    return max(tat - max(w.limit * w.base, w.cost * w.span), now)
  end
  local from = max(now, w.last_at)
  local excess = w.sum + w.cost - w.limit
  if excess <= 0 then return from end
  -- The oldest entries that must leave the window first; read a few at a time. (Past the last one,
  -- which only a count out of step with its log could reach, it waits for the last to leave.)
  local first = 0
  while true do
    local entries = call('LRANGE', w.log, first, first + 15)
    for j = 1, #entries do
      local at, cost = parse(entries[j])
      excess = excess - cost
      if excess <= 0 then return max(from, at + w.span) end
    end
    if #entries < 16 then return from + w.span end
    first = first + 16
  end
end

-- How long from now the limit's keys are needed: until the last instant a window counts, and no less
-- than a place in line lasts, so the hash's record of the line outlives every place; nor less than
-- what it says of a lost state ("reborn", "restoring") holds.
local function needed(d)
  local horizon = max(d.place_ttl, d.line_until - d.now, d.reborn - d.now, d.restoring - d.now, d.handover and d.lease_ttl or 0)
  for i = 1, d.n do
    local w = d.windows[i]
    if w.gcra then
      horizon = max(horizon, w.tat - d.now)
    elseif w.length > 0 then
      horizon = max(horizon, w.last_at + w.span - d.now)
    end
  end
  return horizon
end

-- Writes back what changed (the windows' numbers, the limit's), in one command, and keeps the keys
-- while they are needed. Every key lives at least until `expiry` (us, Redis's clock), a second past
-- the last instant it is needed: each was given that long at once, and nothing shortens it. While that
-- holds, only a log made afresh gets an expiry (to `expiry`); else every key gets twice what it needs
-- now, so that this is done about once per window length rather than per decision. The hash is
-- written first: a key made afresh by HSET has no expiry to keep.
local function save(d)
  local changed = {}
  for i = 1, d.n do
    local w = d.windows[i]
    if w.dirty then
      changed[#changed + 1], changed[#changed + 2] = w.id, w.gcra and gcra_packed(w.tat) or log_packed(w)
    end
  end
  if #changed == 0 and not d.limit_changed then return end
  local horizon = needed(d)
  local renew = d.expiry < d.now + horizon + 1000000
  local ttl_ms = ceil((2 * horizon + 1000000) / 1000)
  if renew then
    d.expiry, d.limit_changed = d.now + ttl_ms * 1000, true
  end
  if d.limit_changed then
    changed[#changed + 1] = 'limit'
    changed[#changed + 1] = limit_packed(d.expiry, d.line_until, d.reborn, d.members, d.members_until, d.restoring)
  end
  call('HSET', d.state, unpack_list(changed))
  if renew then
    call('PEXPIRE', d.state, int(ttl_ms))
  end
  for i = 1, d.n do
    local w = d.windows[i]
    if not w.gcra and w.length > 0 and (renew or w.fresh) then
      call('PEXPIRE', w.log, int(renew and ttl_ms or ceil((d.expiry - d.now) / 1000)))
    end
    w.dirty, w.fresh = false, false
  end
  d.limit_changed = false
end

-- The answer (see the top), with each window's `per_window` (its receipt, or what is free) after
-- their use; its numbers packed as the call's are, in one bulk string that the client reads in one step.
local function reply(d, status, a, b, per_window)
  save(d)
  local n, now = d.n, d.now
  local answer = {status, d.members, d.leases, a, b, now}
  for i = 1, n do
    local w = d.windows[i]
    answer[6 + i], answer[6 + n + i] = used(w, now), clears(w, now)
  end
  if per_window then
    for i = 1, n do answer[6 + 2 * n + i] = d.windows[i][per_window] end
  end
  return pack(integers(#answer), unpack_list(answer))
end

-- Takes this waiter out of the line (admitted, or refused for good).
local function leave_line(d)
  if d.in_line then
    call('ZREM', d.line_key, d.waiter)
    call('ZREM', d.places_key, d.waiter)
  end
end

-- How many in line go before this request: those ahead of its place, or for a request not in line
-- (a newcomer), every waiter of its priority or higher. Places not renewed in time are let go first.
local function ahead_in_line(d)
  if d.line_until <= d.now or call('EXISTS', d.line_key) == 0 then return 0 end
  local gone = call('ZRANGEBYSCORE', d.places_key, '-inf', d.now)
  if #gone > 0 then
    call('ZREM', d.line_key, unpack_list(gone))
    call('ZREMRANGEBYSCORE', d.places_key, '-inf', d.now)
  end
  if d.waiter ~= '' then
    local rank = call('ZRANK', d.line_key, d.waiter)
    if rank then
      d.in_line = true
      return rank
    end
  end
  return call('ZCOUNT', d.line_key, '-inf', line_score(d.priority, TICKETS - 1))
end

-- Puts this waiter in line (a newcomer gets the next ticket), or keeps it there: its place is
-- renewed until `asks_in` from now (us: when it will ask again) and place_ttl more.
local function stand_in_line(d, asks_in)
  if not d.in_line then
    local ticket = call('HINCRBY', d.state, 'ticket', 1) % TICKETS
    call('ZADD', d.line_key, line_score(d.priority, ticket), d.waiter)
  end
  local lasts = asks_in + d.place_ttl
  call('ZADD', d.places_key, d.now + lasts, d.waiter)
  if d.now + lasts > d.line_until then
    d.line_until, d.limit_changed = d.now + lasts, true
  end
  keep(d.line_key, lasts)
  keep(d.places_key, lasts)
end

-- A limit whose state Redis lost (a restart without persistence, a failover to a replica behind, a
-- flush) would start with empty windows while the fleet's last admissions still count at the server.
-- Every decision carries what its client recalls of each window from its last answer; the first to
-- find the state gone counts that again, as admitted at the instant its last unit leaves minus the
-- window (so all of it stays until then), and until the longest window has passed ("reborn") a client
-- that recalls more adds the difference. Clients' last answers differ by what the fleet admitted
-- between them: that much can be missed, no more.
local function recall_lost_state(d, absent)
  local recalled = {}
  if not absent then
    local names = {}
    for i = 1, d.n do names[i] = 'recalled:' .. d.windows[i].id end
    recalled = call('HMGET', d.state, unpack_list(names))
  end
  local recalls = {}
  for i = 1, d.n do
    local w = d.windows[i]
    local counted = recall(w, d.now, absent and 0 or to_number(recalled[i] or '0'))
    if counted then
      recalls[#recalls + 1], recalls[#recalls + 2] = 'recalled:' .. w.id, int(counted)
    end
  end
  if #recalls == 0 then return end
  if absent then
    local longest = 0
    for i = 1, d.n do
      local w = d.windows[i]
      longest = max(longest, w.gcra and w.tat - d.now or w.span)
    end
    -- What a client recalls was reserved at most HORIZON after its last answer, before the loss.
    d.reborn, d.limit_changed = max(d.reborn, d.now + longest + HORIZON), true
  end
  call('HSET', d.state, unpack_list(recalls))
end

-- Leases are lost with the state too, while their requests run on. The first decision to find the
-- state gone holds as many as its client saw held in its last answer (those still there aside) by
-- stand-ins, "recalled:<k>", which last no longer than those leases would have unless renewed; and for
-- a lease's TTL each live process's next renewal puts its own leases back, each in place of a stand-in
-- (renew.lua). What no client saw lately can be missed until its holder renews it, no longer.
local function recall_leases(d, lease_key, recalled, last_until)
  d.restoring, d.limit_changed = d.now + d.lease_ttl, true
  if recalled <= 0 or last_until <= d.now then return end
  call('ZREMRANGEBYSCORE', lease_key, '-inf', d.now)
  local stand_ins = recalled - call('ZCARD', lease_key)
  if stand_ins <= 0 then return end
  for k = 1, stand_ins do
    call('ZADD', lease_key, last_until, 'recalled:' .. k)
  end
  call('HSET', d.state, 'stand_ins', stand_ins)
  keep(lease_key, last_until - d.now)
end

return function(KEYS, ARGV)
  local state, lease_key, member_key, withdrawn_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
  local lease_id, member, waiter = ARGV[2], ARGV[3], ARGV[4]
  local numbers = {unpack_bytes(integers(#ARGV[1] / 8), ARGV[1])}
  local mode = numbers[1] == 1 and 'now' or (numbers[1] == 2 and 'reserve' or 'peek')
  local max_wait, max_leases, lease_ttl = numbers[2], numbers[3], numbers[4]
  local member_ttl, priority, place_ttl, n, handover = numbers[5], numbers[6], numbers[7], numbers[8], numbers[9]
  local recalled_leases, recalled_leases_until = numbers[10], numbers[11]
  local now = redis_now()

  -- The limit's numbers and every window's, in one read.
  local stored = call('HMGET', state, 'limit', unpack_list(ARGV, 5, 4 + n))
  local absent = true
  for i = 1, n + 1 do
    if stored[i] then absent = false break end
  end
  local d = {
    now = now, state = state, n = n, windows = {}, leases = 0, waiter = waiter, priority = priority,
    place_ttl = place_ttl, line_key = KEYS[5], places_key = KEYS[6], in_line = false,
    handover = false, lease_ttl = lease_ttl, limit_changed = false,
    expiry = 0, line_until = 0, reborn = 0, members = 0, members_until = 0, restoring = 0,
  }
  d.expiry, d.line_until, d.reborn, d.members, d.members_until, d.restoring = limit_state(stored[1])

  -- How many processes share the limit: counted afresh when this one renews its membership (about
  -- once a second), else as counted then, which holds until the last renewal counted expires.
  if member ~= '' then
    call('ZADD', member_key, now + member_ttl, member)
    call('ZREMRANGEBYSCORE', member_key, '-inf', now)
    call('PEXPIRE', member_key, ceil(member_ttl / 1000))
    d.members, d.members_until, d.limit_changed = call('ZCARD', member_key), now + member_ttl, true
  elseif d.members_until <= now then
    d.members = call('ZCARD', member_key)
  end

  local handover_base = 4 + n
  if handover > 0 then
    local field = 'handed:' .. ARGV[handover_base + 1]
    if to_number(call('HGET', state, field) or '0') >= handover then
      handover = 0
    else
      call('HSET', state, field, handover)
      d.handover, d.limit_changed = true, true
    end
  end

  -- Every window as the call describes it, with its numbers as the hash holds them (a window without
  -- them starts afresh, see common.lua); whatever a log held without its state counts nothing.
  for i = 1, n do
    local first = HEADER + (i - 1) * PER_WINDOW
    local w = {
      id = ARGV[4 + i], gcra = numbers[first + 1] == 1, limit = numbers[first + 2],
      span = numbers[first + 3], base = numbers[first + 4], cost = numbers[first + 5],
      merge = numbers[first + 6], budget = numbers[first + 7] == 1,
      debt = handover > 0 and numbers[first + 8] or 0,
      recall_used = numbers[first + 9], recall_until = numbers[first + 10],
      log = KEYS[LOGS + i], dirty = false, fresh = false,
      tat = 0, sum = 0, seq = 0, length = 0, head = 0, last_at = 0, last_cost = 0,
      instant = false, most = 0, free = 0, receipt = 0,
    }
    d.windows[i] = w
    if w.gcra then
      w.tat = read_gcra(stored[i + 1])
    else
      read_log(w, stored[i + 1], now)
      if absent then call('DEL', w.log) end
      forget(w, now)
    end
  end
  if n > 0 and (absent or d.reborn > now) then
    recall_lost_state(d, absent)
  end
  if absent and max_leases > 0 then
    recall_leases(d, lease_key, recalled_leases, recalled_leases_until)
  end
  if handover > 0 then
    for i = 1, n do
      local w = d.windows[i]
      if w.debt > 0 then count_debt(w, now) end
    end
    for i = handover_base + 2, #ARGV do
      call('ZADD', lease_key, now + lease_ttl, ARGV[i])
    end
    keep(lease_key, lease_ttl)
  end

  -- Leases, when this request asks for one or someone looks: expired ones (their holder died) go first.
  if lease_id ~= '' or mode == 'peek' then
    call('ZREMRANGEBYSCORE', lease_key, '-inf', now)
    d.leases = call('ZCARD', lease_key)
  end

  -- A decision its client gave up on before Redis ran it (reclaim.lua came first) takes nothing.
  if lease_id ~= '' and (call('ZREM', withdrawn_key, lease_id) == 1 or (waiter ~= '' and call('ZREM', withdrawn_key, waiter) == 1)) then
    return reply(d, 5, 0, 0)
  end

  local windows = d.windows
  for i = 1, n do
    local w = windows[i]
    if w.cost > 0 then
      w.instant, w.most = earliest(w, now)
      -- A budget never makes a request wait: one that does not fit now is refused (as in the core).
      if w.budget and mode ~= 'peek' and (not w.instant or w.instant > now) then
        leave_line(d)
        return reply(d, 6, i, 0)
      end
    end
  end
  local at, binding = now, 0
  for i = 1, n do
    local w = windows[i]
    if w.cost > 0 then
      if not w.instant then
        leave_line(d)
        return reply(d, 2, i, w.most)
      end
      if w.instant > at then at, binding = w.instant, i end
    end
  end

  if mode == 'peek' then
    for i = 1, n do
      local w = windows[i]
      w.free = w.gcra and gcra_remaining(w, now) or max(w.limit - w.sum, 0)
    end
    return reply(d, 4, at - now, binding, 'free')
  end

  local ahead = ahead_in_line(d)
  if lease_id ~= '' and ahead >= max_leases - d.leases then
    local look_again = place_ttl
    if d.leases >= max_leases then
      local oldest = call('ZRANGE', lease_key, 0, 0, 'WITHSCORES')
      look_again = min(look_again, to_number(oldest[2]) - now)
    end
    if ahead < max_leases then
      -- Within reach of the next release: it looks again within 10 ms (the others back off to 50 ms),
      -- so a slot freed anywhere goes back to work soon; at most max_leases waiters poll this often.
      look_again = min(look_again, 10000)
    end
    if waiter ~= '' and mode == 'reserve' then
      stand_in_line(d, 0)
      return reply(d, 3, look_again, 1)
    end
    return reply(d, 3, look_again, 0)
  end

  local wait = at - now
  if wait > 0 and (mode == 'now' or (max_wait >= 0 and wait > max_wait)) then
    leave_line(d)
    return reply(d, 1, wait, binding)
  end
  -- The rate's turn: nobody of its priority or higher waits ahead of it (a free lease within reach is
  -- shared by those near the front, as above), and its instant is near. A request that may not wait
  -- (`now`, or no time to) is refused behind others; one without a place in line is decided at once.
  local behind = ahead > 0 and (wait > 0 or lease_id == '')
  if behind and (mode == 'now' or max_wait == 0) then
    leave_line(d)
    return reply(d, 7, 0, 0)
  end
  if mode == 'reserve' and waiter ~= '' and (behind or wait > HORIZON) then
    -- Not before its instant's horizon, nor before those ahead have had their turns.
    local look_again = min(max(wait - HORIZON, ahead * STEP, SOONEST), LATEST)
    stand_in_line(d, look_again)
    return reply(d, 7, look_again, 1)
  end
  leave_line(d)

  -- Admitted at `at`: count it in every window, take the lease.
  for i = 1, n do
    local w = windows[i]
    local receipt = 0
    if w.cost > 0 then
      w.dirty = true
      if w.gcra then
        -- Gcra::schedule(tat, cost, at).tat: counted from when every window lets it go.
        w.tat = gcra_charge(w.tat, at, w.cost, w.span)
        receipt = w.tat
      else
        if w.length > 0 and at - w.last_at < w.merge then
          -- Closer to the newest entry than `merge`: they share it, dated at the later instant.
          w.last_at, w.last_cost, w.sum = at, w.last_cost + w.cost, w.sum + w.cost
          if w.length == 1 then w.head = at end
          call('LSET', w.log, '-1', entry(at, w.last_cost))
        else
          w.fresh = push(w, at, w.cost) or w.fresh
        end
        receipt = w.seq + w.length  -- 1-based, so that 0 means "counted nothing"
      end
    end
    w.receipt = receipt
  end
  if lease_id ~= '' then
    call('ZADD', lease_key, now + lease_ttl, lease_id)
    call('PEXPIRE', lease_key, ceil(lease_ttl / 1000) + 1000)
    d.leases = d.leases + 1
  end
  return reply(d, 0, wait, at, 'receipt')
end
