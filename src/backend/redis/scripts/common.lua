-- What every holysheep script shares: Redis's clock, key lifetimes, the log's entries and GCRA's
-- charge. Loaded once as the head of the holysheep Functions library (Redis 7.0+), or put before each
-- script run by EVALSHA on older servers (src/backend/redis/scripts.rs). Every number is an integer
-- below 2^53, so Lua's doubles hold it exactly: no float drift. (Numbers are written with '%d': Lua's
-- own tostring would print a microsecond timestamp as 1.7640500000000e+15.)

-- An integer as Redis takes it: a Lua number given to redis.call is printed with '%.17g', which costs
-- Redis several times more than '%d'.
local function int(x)
  return string.format('%d', x)
end

-- Redis's own clock, in microseconds.
local function redis_now()
  local clock = redis.call('TIME')
  return tonumber(clock[1]) * 1000000 + tonumber(clock[2])
end

-- Keeps `key` at least `us` microseconds more (never shortens what another window needs).
local function keep(key, us)
  local ms = math.ceil(us / 1000) + 1000
  if redis.call('PTTL', key) < ms then
    redis.call('PEXPIRE', key, int(ms))
  end
end

-- Removes each of ids[first..] from the sorted set `set`; one not there is withdrawn instead, held in
-- `withdrawn` for `ttl` us, so that an ask of it that Redis runs late (after a stall) takes nothing.
-- Withdrawals past their time are forgotten. Returns how many were removed.
local function remove_or_withdraw(set, withdrawn, ids, first, now, ttl)
  local removed = 0
  for i = first, #ids do
    if redis.call('ZREM', set, ids[i]) == 1 then
      removed = removed + 1
    else
      redis.call('ZADD', withdrawn, now + ttl, ids[i])
    end
  end
  redis.call('ZREMRANGEBYSCORE', withdrawn, '-inf', now)
  keep(withdrawn, ttl)
  return removed
end

-- An exact window's log entry "at:cost", read.
local function parse(entry)
  local at, cost = string.match(entry, '^(%d+):(%d+)$')
  return tonumber(at), tonumber(cost)
end

-- Gcra::charge (src/core/gcra.rs): the theoretical arrival time after `units` more, each `span` apart,
-- counted from `from` or the old one, whichever is later.
local function gcra_charge(tat, from, units, span)
  return math.max(tat, from) + units * span
end

-- Tickets number arrivals in a limiter's line for concurrency slots (see acquire.lua), modulo this.
local TICKETS = 4294967296

-- A waiter's score in the line: higher priority first, then earlier arrival; written with '%d', since
-- Redis would turn a Lua number into a string with 14 significant digits only.
local function line_score(priority, ticket)
  return string.format('%d', -priority * TICKETS + ticket)
end
