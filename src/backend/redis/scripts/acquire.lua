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
-- KEYS[1]      the state hash: per window "sum:<id>" (units in the log), "seq:<id>" (sequence number of
--              the oldest log entry), "tat:<id>" (a GCRA window's theoretical arrival time); per
--              instance "handed:<instance>" (the last hand-over applied, see below); "expiry" (us:
--              until when the hash and every log live at least, see the end); "ticket" (the line's
--              last); "line" (us: no place in the line lasts longer, so a decision made later need not
--              look at the line); "reborn" (us: until when what clients recall is still counted after
--              the state was lost, see below) with, per window, "recalled:<id>" (what was counted again
--              so far)
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
--              none); then ten per window: kind (0 "log", 1 "gcra"), limit (log: units per window;
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

local state, lease_key, member_key, withdrawn_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local line_key, places_key = KEYS[5], KEYS[6]
local lease_id, member, waiter = ARGV[2], ARGV[3], ARGV[4]
local LOGS, HEADER, PER_WINDOW = 6, 9, 10
local numbers = {struct.unpack('<' .. string.rep('i8', #ARGV[1] / 8), ARGV[1])}
local mode = numbers[1] == 1 and 'now' or (numbers[1] == 2 and 'reserve' or 'peek')
local max_wait, max_leases, lease_ttl = numbers[2], numbers[3], numbers[4]
local member_ttl, priority, place_ttl, n, handover = numbers[5], numbers[6], numbers[7], numbers[8], numbers[9]

-- How far ahead of now a request may reserve its instant at the rate (us); a request that would wait
-- longer stands in the line instead. What a higher-priority arrival may find reserved ahead of it.
local HORIZON = 250000
-- A waiter behind the front asks again after this per place ahead of it (us), within these bounds: it
-- cannot go before those ahead, each of whom takes about one ask. Its place lasts until it is due to
-- ask again and place_ttl more, so a long backlog costs Redis an ask per waiter per LATEST at most, and
-- a dead waiter holds up those behind it for place_ttl past its turn at most.
local STEP, SOONEST, LATEST = 2000, 1000, 10000000

local now = redis_now()

if member ~= '' then
  redis.call('ZADD', member_key, now + member_ttl, member)
  redis.call('ZREMRANGEBYSCORE', member_key, '-inf', now)
  redis.call('PEXPIRE', member_key, math.ceil(member_ttl / 1000))
end
local members = redis.call('ZCARD', member_key)

local handover_base = 4 + n
if handover > 0 then
  local field = 'handed:' .. ARGV[handover_base + 1]
  if tonumber(redis.call('HGET', state, field) or '0') >= handover then
    handover = 0
  else
    redis.call('HSET', state, field, handover)
  end
end

-- Read every window, forgetting log entries that can no longer share a window with `now`; a hand-over
-- first counts what the instance admitted on its own, from now on. The state hash is read once, for
-- every window and the keys' expiry (see below); what changed in it is written back once, by `save`
-- (`dirty`: a log's count and sequence number, a GCRA's arrival time). Every field of a window is
-- named in its table's constructor, so the table is made at its full size at once.
local windows, fields = {}, {'expiry', 'line'}
for i = 1, n do
  local first = HEADER + (i - 1) * PER_WINDOW
  local id, kind = ARGV[4 + i], numbers[first + 1] == 1 and 'gcra' or 'log'
  windows[i] = {
    id = id, kind = kind, limit = numbers[first + 2],
    span = numbers[first + 3], base = numbers[first + 4], cost = numbers[first + 5],
    merge = numbers[first + 6], budget = numbers[first + 7] == 1,
    debt = handover > 0 and numbers[first + 8] or 0,
    recall_used = numbers[first + 9], recall_until = numbers[first + 10],
    log = KEYS[LOGS + i], tat = 0, sum = 0, seq = 0, last_at = false, last_cost = 0, dirty = false,
    field = (kind == 'gcra' and 'tat:' or 'sum:') .. id, seq_field = 'seq:' .. id,
  }
  fields[#fields + 1] = windows[i].field
  if kind == 'log' then fields[#fields + 1] = windows[i].seq_field end
end
fields[#fields + 1] = 'reborn'
local stored = redis.call('HMGET', state, unpack(fields))
-- Every key of the limit lives at least until `expiry` (us, Redis's clock): each was given that long
-- at once, and nothing shortens it. An admission needing no longer sets no expiry (see the end).
local expiry = tonumber(stored[1] or '0')

-- A limit whose state Redis lost (a restart without persistence, a failover to a replica behind, a
-- flush) would start with empty windows while the fleet's last admissions still count at the server.
-- Every decision carries what its client recalls of each window from its last answer; the first to
-- find the state gone counts that again, as admitted at the instant its last unit leaves minus the
-- window (so all of it stays until then), and until the longest window has passed ("reborn") a client
-- that recalls more adds the difference. Clients' last answers differ by what the fleet admitted
-- between them: that much can be missed, no more.
local absent = true
for i = 1, #fields do
  if stored[i] then absent = false break end
end
local reborn = tonumber(stored[#fields] or '0')
local recalled, recalls = {}, {}
if not absent and reborn > now then
  local names = {}
  for i, w in ipairs(windows) do names[i] = 'recalled:' .. w.id end
  recalled = redis.call('HMGET', state, unpack(names))
end
local recalling = absent or reborn > now

-- Counts again what window w's client recalls beyond what was recalled already (see above).
local function recall(i, w)
  if not recalling or w.recall_until <= now or w.recall_used <= 0 then return end
  local before = absent and 0 or tonumber(recalled[i] or '0')
  if w.kind == 'gcra' then
    -- The backlog runs until recall_until: what runs past what was counted again so far is added.
    local extra = w.recall_until - math.max(before, now)
    if extra <= 0 then return end
    w.tat, w.dirty = math.max(w.tat, now) + extra, true
    recalls[#recalls + 1], recalls[#recalls + 2] = 'recalled:' .. w.id, int(w.recall_until)
  else
    local extra = w.recall_used - before
    if extra <= 0 then return end
    local at = math.max(w.recall_until - w.span, w.last_at or 0)
    redis.call('RPUSH', w.log, string.format('%d:%d', at, extra))
    keep(w.log, at - now + w.span)
    w.last_at, w.last_cost, w.sum, w.dirty = at, extra, w.sum + extra, true
    recalls[#recalls + 1], recalls[#recalls + 2] = 'recalled:' .. w.id, int(w.recall_used)
  end
  -- The keys must live as long as what was counted again: the end sets their expiry afresh.
  expiry = 0
end

local line_until = tonumber(stored[2] or '0')
local read = 2
for i, w in ipairs(windows) do
  read = read + 1
  if w.kind == 'gcra' then
    w.tat = tonumber(stored[read] or '0')
    recall(i, w)
    if w.debt > 0 then
      w.tat = gcra_charge(w.tat, now, w.debt, w.span)
      redis.call('HSET', state, w.field, int(w.tat))
      keep(state, w.tat - now)
    end
  else
    w.sum, w.seq = tonumber(stored[read] or '0'), tonumber(stored[read + 1] or '0')
    -- A new state numbers its log from Redis's clock: a receipt from before a loss (or an expiry)
    -- names no entry after it.
    if absent then w.seq = now end
    read = read + 1
    local forgotten = 0
    while true do
      local head = redis.call('LINDEX', w.log, '0')
      if not head then
        -- An empty log counts nothing. Its key may have expired with its last entry while the state
        -- hash, kept longer (a longer window, a lease), still held its count.
        if w.sum ~= 0 then w.sum, forgotten = 0, forgotten + 1 end
        break
      end
      local at, cost = parse(head)
      if at + w.span > now then break end
      redis.call('LPOP', w.log)
      w.sum, w.seq, forgotten = w.sum - cost, w.seq + 1, forgotten + 1
    end
    local last = redis.call('LINDEX', w.log, '-1')
    if last then w.last_at, w.last_cost = parse(last) end
    local counted = w.sum
    recall(i, w)
    if w.debt > 0 then
      w.last_at, w.last_cost = math.max(now, w.last_at or now), w.debt
      redis.call('RPUSH', w.log, string.format('%d:%d', w.last_at, w.debt))
      keep(w.log, w.last_at - now + w.span)
      keep(state, w.last_at - now + w.span)
      -- The log may be new, with less time than `expiry` promised: the next admission sets it again.
      redis.call('HDEL', state, 'expiry')
      expiry = 0
      w.sum = w.sum + w.debt
    end
    w.dirty = forgotten > 0 or w.debt > 0 or w.sum ~= counted
  end
end
if #recalls > 0 then
  if absent then
    local longest = 0
    for _, w in ipairs(windows) do longest = math.max(longest, w.kind == 'gcra' and w.tat - now or w.span) end
    -- What a client recalls was reserved at most HORIZON after its last answer, before the loss.
    recalls[#recalls + 1], recalls[#recalls + 2] = 'reborn', int(now + longest + HORIZON)
  end
  redis.call('HSET', state, unpack(recalls))
end
if handover > 0 then
  for i = handover_base + 2, #ARGV do
    redis.call('ZADD', lease_key, now + lease_ttl, ARGV[i])
  end
  keep(lease_key, lease_ttl)
  keep(state, lease_ttl)
end

-- The units window w counts now (the GCRA backlog in whole units, rounded up).
local function used(w)
  if w.kind == 'gcra' then
    return math.ceil(math.max(w.tat - now, 0) / w.span)
  end
  return w.sum
end

-- When the last unit window w counts leaves it (us; 0 when it counts nothing): what its client recalls.
local function clears(w)
  if w.kind == 'gcra' then
    return w.tat > now and w.tat or 0
  end
  return (w.sum > 0 and w.last_at) and w.last_at + w.span or 0
end

-- Leases, when this request asks for one or someone looks: expired ones (their holder died) go first.
local leases = 0
if lease_id ~= '' or mode == 'peek' then
  redis.call('ZREMRANGEBYSCORE', lease_key, '-inf', now)
  leases = redis.call('ZCARD', lease_key)
end

local in_line = false

-- Takes this waiter out of the line (admitted, or refused for good).
local function leave_line()
  if in_line then
    redis.call('ZREM', line_key, waiter)
    redis.call('ZREM', places_key, waiter)
  end
end

-- How many in line go before this request: those ahead of its place, or for a request not in line
-- (a newcomer), every waiter of its priority or higher. Places not renewed in time are let go first.
local function ahead_in_line()
  if line_until <= now or redis.call('EXISTS', line_key) == 0 then return 0 end
  local gone = redis.call('ZRANGEBYSCORE', places_key, '-inf', now)
  if #gone > 0 then
    redis.call('ZREM', line_key, unpack(gone))
    redis.call('ZREMRANGEBYSCORE', places_key, '-inf', now)
  end
  if waiter ~= '' then
    local rank = redis.call('ZRANK', line_key, waiter)
    if rank then
      in_line = true
      return rank
    end
  end
  return redis.call('ZCOUNT', line_key, '-inf', line_score(priority, TICKETS - 1))
end

-- Puts this waiter in line (a newcomer gets the next ticket), or keeps it there: its place is
-- renewed until `asks_in` from now (us: when it will ask again) and place_ttl more.
local function stand_in_line(asks_in)
  if not in_line then
    local ticket = redis.call('HINCRBY', state, 'ticket', 1) % TICKETS
    redis.call('ZADD', line_key, line_score(priority, ticket), waiter)
  end
  local lasts = asks_in + place_ttl
  redis.call('ZADD', places_key, now + lasts, waiter)
  if now + lasts > line_until then
    line_until = now + lasts
    redis.call('HSET', state, 'line', int(line_until))
  end
  keep(line_key, lasts)
  keep(places_key, lasts)
  keep(state, lasts)
end

-- Writes back what changed in the windows' state (a log's count and sequence number, a GCRA's
-- theoretical arrival time), and `expiry` if given, in one command.
local function save(new_expiry)
  local changed = {}
  for _, w in ipairs(windows) do
    if w.dirty then
      changed[#changed + 1], changed[#changed + 2] = w.field, int(w.kind == 'gcra' and w.tat or w.sum)
      if w.kind == 'log' then
        changed[#changed + 1], changed[#changed + 2] = w.seq_field, int(w.seq)
      end
    end
    w.dirty = false
  end
  if new_expiry then
    changed[#changed + 1], changed[#changed + 2] = 'expiry', int(new_expiry)
  end
  if #changed > 0 then
    redis.call('HSET', state, unpack(changed))
  end
end

-- The answer (see the top), with `per_window` (receipts, or what is free) after each window's use; its
-- numbers packed as the call's are, in one bulk string that the client reads in one step.
local function reply(status, a, b, per_window)
  save()
  local answer = {status, members, leases, a, b, now}
  for i, w in ipairs(windows) do
    answer[6 + i], answer[6 + n + i] = used(w), clears(w)
  end
  for i, value in ipairs(per_window or {}) do
    answer[6 + 2 * n + i] = value
  end
  return struct.pack('<' .. string.rep('i8', #answer), unpack(answer))
end

-- A decision its client gave up on before Redis ran it (reclaim.lua came first) takes nothing.
if lease_id ~= '' and (redis.call('ZREM', withdrawn_key, lease_id) == 1 or (waiter ~= '' and redis.call('ZREM', withdrawn_key, waiter) == 1)) then
  return reply(5, 0, 0)
end

-- Gcra::remaining: the whole units a GCRA window could take now without waiting. Its tolerance is the
-- configured one (burst * base) whatever the rate in force.
local function gcra_remaining(w)
  if w.tat <= now then return w.limit end
  return math.floor(math.max(w.limit * w.base - (w.tat - now), 0) / w.span)
end

-- The earliest instant (not before now) window w admits its cost, or nil and the most it ever can.
-- GCRA: Gcra::schedule's instant; its tolerance never below the request's own span.
local function earliest(w)
  if w.kind == 'gcra' then
    if w.cost > w.limit then return nil, w.limit end
    local tat = gcra_charge(w.tat, now, w.cost, w.span)
    return math.max(tat - math.max(w.limit * w.base, w.cost * w.span), now)
  end
  if w.cost > w.limit then return nil, w.limit end
  local floor = math.max(now, w.last_at or now)
  local excess = w.sum + w.cost - w.limit
  if excess <= 0 then return floor end
  -- The oldest entries that must leave the window first; read a few at a time. (Past the last one,
  -- which only a count out of step with its log could reach, it waits for the last to leave.)
  local start = 0
  while true do
    local entries = redis.call('LRANGE', w.log, start, start + 15)
    for _, entry in ipairs(entries) do
      local at, cost = parse(entry)
      excess = excess - cost
      if excess <= 0 then return math.max(floor, at + w.span) end
    end
    if #entries < 16 then return floor + w.span end
    start = start + 16
  end
end

local instants, nevers = {}, {}
for i, w in ipairs(windows) do
  if w.cost > 0 then
    instants[i], nevers[i] = earliest(w)
    -- A budget never makes a request wait: one that does not fit now is refused (as in the core).
    if w.budget and mode ~= 'peek' and (not instants[i] or instants[i] > now) then
      leave_line()
      return reply(6, i, 0)
    end
  end
end
local at, binding = now, 0
for i, w in ipairs(windows) do
  if w.cost > 0 then
    if not instants[i] then
      leave_line()
      return reply(2, i, nevers[i])
    end
    if instants[i] > at then at, binding = instants[i], i end
  end
end

if mode == 'peek' then
  local free = {}
  for i, w in ipairs(windows) do
    free[i] = w.kind == 'gcra' and gcra_remaining(w) or math.max(w.limit - w.sum, 0)
  end
  return reply(4, at - now, binding, free)
end

local ahead = ahead_in_line()
if lease_id ~= '' then
  if ahead >= max_leases - leases then
    local look_again = place_ttl
    if leases >= max_leases then
      local oldest = redis.call('ZRANGE', lease_key, 0, 0, 'WITHSCORES')
      look_again = math.min(look_again, tonumber(oldest[2]) - now)
    end
    if ahead < max_leases then
      -- Within reach of the next release: it looks again within 10 ms (the others back off to 50 ms),
      -- so a slot freed anywhere goes back to work soon; at most max_leases waiters poll this often.
      look_again = math.min(look_again, 10000)
    end
    if waiter ~= '' and mode == 'reserve' then
      stand_in_line(0)
      return reply(3, look_again, 1)
    end
    return reply(3, look_again, 0)
  end
end

local wait = at - now
if wait > 0 and (mode == 'now' or (max_wait >= 0 and wait > max_wait)) then
  leave_line()
  return reply(1, wait, binding)
end
-- The rate's turn: nobody of its priority or higher waits ahead of it (a free lease within reach is
-- shared by those near the front, as above), and its instant is near. A request that may not wait
-- (`now`, or no time to) is refused behind others; one without a place in line is decided at once.
local behind = ahead > 0 and (wait > 0 or lease_id == '')
if behind and (mode == 'now' or max_wait == 0) then
  leave_line()
  return reply(7, 0, 0)
end
if mode == 'reserve' and waiter ~= '' and (behind or wait > HORIZON) then
  -- Not before its instant's horizon, nor before those ahead have had their turns.
  local look_again = math.min(math.max(wait - HORIZON, ahead * STEP, SOONEST), LATEST)
  stand_in_line(look_again)
  return reply(7, look_again, 1)
end
leave_line()

-- Admitted at `at`: count it in every window, take the lease, keep the keys while they matter.
local receipts, fresh = {}, {}
local horizon = 0
for i, w in ipairs(windows) do
  local receipt = 0
  if w.kind == 'gcra' then
    if w.cost > 0 then
      -- Gcra::schedule(tat, cost, at).tat: counted from when every window lets it go.
      w.tat, w.dirty = gcra_charge(w.tat, at, w.cost, w.span), true
      receipt = w.tat
    end
    horizon = math.max(horizon, w.tat - now)
  else
    if w.cost > 0 then
      local length
      if w.last_at and at - w.last_at < w.merge then
        redis.call('LSET', w.log, '-1', string.format('%d:%d', at, (w.last_cost + w.cost)))
        length = redis.call('LLEN', w.log)
      else
        length = redis.call('RPUSH', w.log, string.format('%d:%d', at, w.cost))
        fresh[#fresh + 1] = length == 1 and w.log or nil
      end
      w.sum, w.dirty, w.last_at = w.sum + w.cost, true, at
      receipt = w.seq + length  -- 1-based, so that 0 means "counted nothing"
    end
    horizon = math.max(horizon, at - now + w.span)
  end
  receipts[i] = receipt
end
-- Every key must live a second past the last instant a window needs it. While `expiry` says so, only a
-- log made afresh (it has no expiry yet) gets one, to `expiry`; else every key gets twice what it
-- needs now, so that this is done about once per window length rather than per decision. The hash is
-- written first: one that HSET makes afresh would have no expiry. It never gets less than a place in
-- line lasts, so its "line" field outlives every place.
horizon = math.max(horizon, place_ttl, line_until - now)
local needed = now + horizon + 1000000
if expiry >= needed then
  save()
  for _, log in ipairs(fresh) do
    redis.call('PEXPIRE', log, int(math.ceil((expiry - now) / 1000)))
  end
else
  local ttl_ms = math.ceil((2 * horizon + 1000000) / 1000)
  save(now + ttl_ms * 1000)
  redis.call('PEXPIRE', state, int(ttl_ms))
  for _, w in ipairs(windows) do
    if w.kind == 'log' then redis.call('PEXPIRE', w.log, int(ttl_ms)) end
  end
end
if lease_id ~= '' then
  redis.call('ZADD', lease_key, now + lease_ttl, lease_id)
  redis.call('PEXPIRE', lease_key, math.ceil(lease_ttl / 1000) + 1000)
end
leases = leases + (lease_id ~= '' and 1 or 0)
return reply(0, wait, at, receipts)
