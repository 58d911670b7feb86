-- What every holysheep script shares: Redis's clock, key lifetimes, the log's entries, the packed state
-- of a limit and its windows, and GCRA's charge. Loaded once as the head of the holysheep Functions
-- library (Redis 7.0+), or put before each script run by EVALSHA on older servers
-- (src/backend/redis/scripts.rs). Each script is a chunk that returns its function of KEYS and ARGV,
-- so what it defines outside that function is made once, when the library loads. Every number is an
-- integer below 2^53, so Lua's doubles hold it exactly: no float drift. (Numbers are written with '%d':
-- Lua's own tostring would print a microsecond timestamp as 1.7640500000000e+15.)

-- While Redis loads a library it lends it only `redis.register_function`, and while a function runs
-- it looks every global up through two tables. So what the scripts use often is taken into these
-- locals by `bind`, which the library runs before every call (it binds them at the first).
local call, format, match, to_number, ceil, floor, max, min, pack, unpack_bytes, unpack_list

local function bind()
  if call then return end
  call, format, match, to_number = redis.call, string.format, string.match, tonumber
  ceil, floor, max, min = math.ceil, math.floor, math.max, math.min
  pack, unpack_bytes, unpack_list = struct.pack, struct.unpack, unpack
end

-- An integer as Redis takes it: a Lua number given to redis.call is printed with '%.17g', which costs
-- Redis several times more than '%d'.
local function int(x)
  return format('%d', x)
end

-- Redis's own clock, in microseconds.
local function redis_now()
  local clock = call('TIME')
  return to_number(clock[1]) * 1000000 + to_number(clock[2])
end

-- Keeps `key` at least `us` microseconds more (never shortens what another window needs).
local function keep(key, us)
  local ms = ceil(us / 1000) + 1000
  if call('PTTL', key) < ms then
    call('PEXPIRE', key, int(ms))
  end
end

-- Removes each of ids[first..] from the sorted set `set`; one not there is withdrawn instead, held in
-- `withdrawn` for `ttl` us, so that an ask of it that Redis runs late (after a stall) takes nothing.
-- Withdrawals past their time are forgotten. Returns how many were removed.
local function remove_or_withdraw(set, withdrawn, ids, first, now, ttl)
  local removed = 0
  for i = first, #ids do
    if call('ZREM', set, ids[i]) == 1 then
      removed = removed + 1
    else
      call('ZADD', withdrawn, now + ttl, ids[i])
    end
  end
  call('ZREMRANGEBYSCORE', withdrawn, '-inf', now)
  keep(withdrawn, ttl)
  return removed
end

-- An exact window's log entry "at:cost" (the instant admitted, us; the units it counts)...
local function entry(at, cost)
  return format('%d:%d', at, cost)
end

-- ...and read back.
local function parse(text)
  local at, cost = match(text, '^(%d+):(%d+)$')
  return to_number(at), to_number(cost)
end

-- Numbers packed as little-endian signed 64-bit integers (struct's '<i8...'), which Redis and Lua pass
-- as they are: each number as text would cost a conversion both ways. The format for `count` numbers
-- is made once.
local formats = {}
local function integers(count)
  local found = formats[count]
  if not found then
    found = '<' .. string.rep('i8', count)
    formats[count] = found
  end
  return found
end

-- The state hash keeps what every decision reads in a few fields, each its numbers packed.
-- The limit's own, field "limit": until when its keys live at least (us; 0: to be set afresh), until
-- when a place in its line may last (no decision made later need look at the line), until when what
-- clients recall of its windows is counted again after its state was lost ("reborn", see acquire.lua),
-- how many processes share it, which holds until the last of them has to renew its membership, and
-- until when a renewal puts back a lease lost with the state ("restoring", see renew.lua).
local function limit_state(packed)
  if not packed then return 0, 0, 0, 0, 0, 0 end
  local expiry, line, reborn, members, members_until, restoring = unpack_bytes(integers(6), packed)
  return expiry, line, reborn, members, members_until, restoring
end

local function limit_packed(expiry, line, reborn, members, members_until, restoring)
  return pack(integers(6), expiry, line, reborn, members, members_until, restoring)
end

-- An exact window's, in the field named by its id: the units its log counts, the sequence number of
-- its oldest entry (a receipt names an entry by it), how many entries the log holds, and the instants
-- of the oldest and newest entries with the newest's units. The log is what counts; these say what a
-- decision would otherwise read of it each time, and every script that changes the log keeps them.
-- A window without numbers has an empty log, numbered from `now` (Redis's clock), so that a receipt
-- from before its numbers were lost names no entry after it.
local function read_log(w, packed, now)
  if packed then
    w.sum, w.seq, w.length, w.head, w.last_at, w.last_cost = unpack_bytes(integers(6), packed)
  else
    w.sum, w.seq, w.length, w.head, w.last_at, w.last_cost = 0, now, 0, 0, 0, 0
  end
end

local function log_packed(w)
  return pack(integers(6), w.sum, w.seq, w.length, w.head, w.last_at, w.last_cost)
end

-- A GCRA window's, in the field named by its id: its theoretical arrival time.
local function read_gcra(packed)
  if not packed then return 0 end
  return (unpack_bytes(integers(1), packed))
end

local function gcra_packed(tat)
  return pack(integers(1), tat)
end

-- Appends an entry to window w's log (w.log its key) and keeps w's state in step. Returns whether it
-- made the log afresh: a key with no expiry yet.
local function push(w, at, units)
  w.length = call('RPUSH', w.log, entry(at, units))
  if w.length == 1 then w.head = at end
  w.last_at, w.last_cost, w.sum = at, units, w.sum + units
  return w.length == 1
end

-- Gcra::charge (src/core/gcra.rs): the theoretical arrival time after `units` more, each `span` apart,
-- counted from `from` or the old one, whichever is later.
local function gcra_charge(tat, from, units, span)
  return max(tat, from) + units * span
end

-- Tickets number arrivals in a limiter's line for concurrency slots (see acquire.lua), modulo this.
local TICKETS = 4294967296

-- A waiter's score in the line: higher priority first, then earlier arrival; written with '%d', since
-- Redis would turn a Lua number into a string with 14 significant digits only.
local function line_score(priority, ticket)
  return format('%d', -priority * TICKETS + ticket)
end
