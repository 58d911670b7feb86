-- Decides one request for one limiter against all its windows and its concurrency lease, all or
-- nothing, on Redis's own clock (TIME, microseconds). Every number is an integer below 2^53, so Lua's
-- doubles hold it exactly: no float drift. (Numbers are written with '%d': Lua's own tostring would
-- print a microsecond timestamp as 1.7640500000000e+15.)
--
-- KEYS[1]      the state hash: per window "sum:<id>" (units in the log), "seq:<id>" (sequence number of
--              the oldest log entry), "tat:<id>" (a GCRA window's theoretical arrival time)
-- KEYS[2]      the lease sorted set: lease id -> expiry (us)
-- KEYS[3]      the member sorted set: limiter instance id -> expiry (us); how many processes share the limit
-- KEYS[3 + i]  window i's admission log (exact windows): a list of "at:cost", oldest first
-- ARGV[1]      mode: "peek" (count nothing), "now" (admit only now), "reserve" (admit at a later instant)
-- ARGV[2]      reserve: the longest wait allowed (us), -1 for any
-- ARGV[3]      lease id to take ("" for none), ARGV[4] most leases at once, ARGV[5] lease TTL (us)
-- ARGV[6]      this instance's member id ("" when it renewed its membership lately), ARGV[7] how long it
--              counts as a member after renewing (us)
-- ARGV[8]      number of windows, then six values per window:
--              id, kind ("log" | "gcra"), limit (log: units per window; gcra: burst), span (log: window
--              length; gcra: one unit's interval), cost (units this request takes), merge (log: entries
--              closer than this share one)
--
-- Returns {status, members, ...}, members being the instances that decided lately, and status one of
--   {0, members, wait, at, receipt_1 .. receipt_n}   admitted at `at` (wait = at - now); receipts to settle
--   {1, members, wait, binding}                      passes only after `wait`, more than allowed: nothing counted
--   {2, members, binding, max_cost}                  window `binding` can never admit the cost
--   {3, members, retry}                              no lease free; the oldest expires in `retry` (us)
--   {4, members, wait, binding, leases, remaining_1 .. remaining_n}   peek: when it would pass; what is free

local state, lease_key, member_key = KEYS[1], KEYS[2], KEYS[3]
local mode, max_wait = ARGV[1], tonumber(ARGV[2])
local lease_id, max_leases, lease_ttl = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local member_ttl = tonumber(ARGV[7])
local n = tonumber(ARGV[8])

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

if ARGV[6] ~= '' then
  redis.call('ZADD', member_key, now + member_ttl, ARGV[6])
  redis.call('ZREMRANGEBYSCORE', member_key, '-inf', now)
  redis.call('PEXPIRE', member_key, math.ceil(member_ttl / 1000))
end
local members = redis.call('ZCARD', member_key)

local function parse(entry)
  local at, cost = string.match(entry, '^(%d+):(%d+)$')
  return tonumber(at), tonumber(cost)
end

-- Read every window, forgetting log entries that can no longer share a window with `now`.
local windows = {}
for i = 1, n do
  local base = 8 + (i - 1) * 6
  local w = {
    id = ARGV[base + 1], kind = ARGV[base + 2], limit = tonumber(ARGV[base + 3]),
    span = tonumber(ARGV[base + 4]), cost = tonumber(ARGV[base + 5]), merge = tonumber(ARGV[base + 6]),
    log = KEYS[3 + i],
  }
  if w.kind == 'gcra' then
    w.tat = tonumber(redis.call('HGET', state, 'tat:' .. w.id) or '0')
  else
    local fields = redis.call('HMGET', state, 'sum:' .. w.id, 'seq:' .. w.id)
    w.sum, w.seq = tonumber(fields[1] or '0'), tonumber(fields[2] or '0')
    local forgotten = 0
    while true do
      local head = redis.call('LINDEX', w.log, 0)
      if not head then break end
      local at, cost = parse(head)
      if at + w.span > now then break end
      redis.call('LPOP', w.log)
      w.sum, w.seq, forgotten = w.sum - cost, w.seq + 1, forgotten + 1
    end
    if forgotten > 0 then
      redis.call('HSET', state, 'sum:' .. w.id, w.sum, 'seq:' .. w.id, w.seq)
    end
    local last = redis.call('LINDEX', w.log, -1)
    if last then w.last_at, w.last_cost = parse(last) end
  end
  windows[i] = w
end

-- The earliest instant (not before now) window w admits its cost, or nil and the most it ever can.
local function earliest(w)
  if w.kind == 'gcra' then
    if w.cost > w.limit then return nil, w.limit end
    local tat = math.max(w.tat, now) + w.cost * w.span
    return math.max(tat - w.limit * w.span, now)
  end
  if w.cost > w.limit then return nil, w.limit end
  local floor = math.max(now, w.last_at or now)
  local excess = w.sum + w.cost - w.limit
  if excess <= 0 then return floor end
  -- The oldest entries that must leave the window first; read a few at a time.
  local start = 0
  while true do
    local entries = redis.call('LRANGE', w.log, start, start + 15)
    for _, entry in ipairs(entries) do
      local at, cost = parse(entry)
      excess = excess - cost
      if excess <= 0 then return math.max(floor, at + w.span) end
    end
    start = start + 16
  end
end

local at, binding = now, 0
for i, w in ipairs(windows) do
  if w.cost > 0 then
    local instant, max_cost = earliest(w)
    if not instant then return {2, members, i, max_cost} end
    if instant > at then at, binding = instant, i end
  end
end

-- Leases, when this request asks for one or someone looks: expired ones (their holder died) go first.
local leases = 0
if lease_id ~= '' or mode == 'peek' then
  redis.call('ZREMRANGEBYSCORE', lease_key, '-inf', now)
  leases = redis.call('ZCARD', lease_key)
end

if mode == 'peek' then
  local reply = {4, members, at - now, binding, leases}
  for i, w in ipairs(windows) do
    local remaining
    if w.kind == 'gcra' then
      remaining = math.floor(math.max(w.limit * w.span - math.max(w.tat - now, 0), 0) / w.span)
    else
      remaining = math.max(w.limit - w.sum, 0)
    end
    reply[5 + i] = remaining
  end
  return reply
end

if lease_id ~= '' and leases >= max_leases then
  local oldest = redis.call('ZRANGE', lease_key, 0, 0, 'WITHSCORES')
  return {3, members, tonumber(oldest[2]) - now}
end

local wait = at - now
if wait > 0 and (mode == 'now' or (max_wait >= 0 and wait > max_wait)) then
  return {1, members, wait, binding}
end

-- Admitted at `at`: count it in every window, take the lease, keep the keys while they matter.
local reply = {0, members, wait, at}
local horizon = 0
for i, w in ipairs(windows) do
  local receipt = 0
  if w.kind == 'gcra' then
    if w.cost > 0 then
      w.tat = math.max(w.tat, now) + w.cost * w.span
      redis.call('HSET', state, 'tat:' .. w.id, w.tat)
      receipt = w.tat
    end
    horizon = math.max(horizon, w.tat - now)
  else
    if w.cost > 0 then
      local length
      if w.last_at and at - w.last_at < w.merge then
        redis.call('LSET', w.log, -1, string.format('%d:%d', at, (w.last_cost + w.cost)))
        length = redis.call('LLEN', w.log)
      else
        length = redis.call('RPUSH', w.log, string.format('%d:%d', at, w.cost))
      end
      redis.call('HSET', state, 'sum:' .. w.id, w.sum + w.cost)
      receipt = w.seq + length  -- 1-based, so that 0 means "counted nothing"
      redis.call('PEXPIRE', w.log, math.ceil((at - now + w.span) / 1000) + 1000)
    end
    horizon = math.max(horizon, at - now + w.span)
  end
  reply[4 + i] = receipt
end
redis.call('PEXPIRE', state, math.ceil(horizon / 1000) + 1000)
if lease_id ~= '' then
  redis.call('ZADD', lease_key, now + lease_ttl, lease_id)
  redis.call('PEXPIRE', lease_key, math.ceil(lease_ttl / 1000) + 1000)
end
return reply
