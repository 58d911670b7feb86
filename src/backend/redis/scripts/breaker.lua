-- One circuit breaker shared by a fleet: the state machine of src/core/breaker.rs (closed, open,
-- half-open, generations, trials, the consecutive and the failure-rate rules), kept in one hash on
-- Redis's own clock (TIME, ms). The client (src/backend/redis/breaker.rs) caches what this returns and
-- decides a closed breaker's calls without asking; successes reach here in batches with the next call.
-- A function of the holysheep library like the limiter's scripts (src/backend/redis/scripts.rs):
-- common.lua's helpers (redis_now, int) come before it, and it returns its function of KEYS and ARGV.
--
-- KEYS[1]  the state hash: state (0 closed, 1 open, 2 half-open), gen, until (open: ms of TIME when
--          trials may start; -1 isolated), admitted / succeeded / trial_at (half-open trials), streak
--          (consecutive failures, closed), and the failure-rate buckets e<i>, c<i>, f<i> (epoch, calls,
--          failures of bucket i; ten buckets over the window, as src/core/outcomes.rs)
-- ARGV[1]  op: "sync" | "fail" | "trial" | "trial_ok" | "trial_back" | "isolate" | "reset"
-- ARGV[2]  failure threshold (0: none), ARGV[3] recovery timeout (ms), ARGV[4] half-open trials,
-- ARGV[5]  failure rate (a fraction; 0: none), ARGV[6] its window (ms), ARGV[7] its minimum calls
-- ARGV[8]  successes this client saw since it last reported them (counted first, while closed)
-- ARGV[9]  the permit's generation modulo 65536 (fail, trial_ok, trial_back)
-- ARGV[10] fail: how long the server said it is away (ms; 0: it did not say)
-- ARGV[11] how long a trial may stay unanswered before it is presumed lost with its client (ms)
--
-- Returns {state, gen, wait, granted, previous}: wait = ms until trials may start (open; -1 isolated),
-- granted = 1 when a trial was given (op "trial"), previous = the state before this call.

return function(KEYS, ARGV)
  local key = KEYS[1]
  local op = ARGV[1]
  local threshold, recovery, trials = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
  local rate, window, minimum = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  local successes, permit_gen, open_for = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
  local trial_lease = tonumber(ARGV[11])

  local now = math.floor(redis_now() / 1000)

  local h = {}
  local raw = redis.call('HGETALL', key)
  for i = 1, #raw, 2 do h[raw[i]] = tonumber(raw[i + 1]) end
  local state, gen = h.state or 0, h.gen or 0
  local previous = state
  local granted = 0

  local function set(fields)
    for name, value in pairs(fields) do
      h[name] = value
      redis.call('HSET', key, name, int(value))
    end
  end

  local buckets = 10
  local bucket_ms = math.max(1, math.floor(window / buckets))
  local function clear_rate()
    for i = 0, buckets - 1 do
      redis.call('HDEL', key, 'e' .. i, 'c' .. i, 'f' .. i)
      h['e' .. i] = nil
    end
  end
  -- Adds calls and failures to the current bucket; returns whether the rate now opens the breaker.
  local function count(calls, failures)
    if rate <= 0 or calls == 0 then return false end
    local epoch = math.floor(now / bucket_ms)
    local i = epoch % buckets
    if h['e' .. i] ~= epoch then set({['e' .. i] = epoch, ['c' .. i] = 0, ['f' .. i] = 0}) end
    set({['c' .. i] = h['c' .. i] + calls, ['f' .. i] = h['f' .. i] + failures})
    local total, failed = 0, 0
    for j = 0, buckets - 1 do
      local e = h['e' .. j]
      if e ~= nil and epoch - e < buckets then
        total, failed = total + h['c' .. j], failed + h['f' .. j]
      end
    end
    return total >= math.max(minimum, 1) and failed >= rate * total
  end

  local function open(ms)
    gen = gen + 1
    state = 1
    set({state = 1, gen = gen, ['until'] = now + ms, admitted = 0, succeeded = 0})
  end
  local function close()
    gen = gen + 1
    state = 0
    set({state = 0, gen = gen, streak = 0, admitted = 0, succeeded = 0})
    clear_rate()
  end

  if state == 0 and successes > 0 then
    if (h.streak or 0) > 0 then set({streak = 0}) end
    if count(successes, 0) then open(recovery) end
  end

  local current = permit_gen == gen % 65536
  if op == 'fail' and current then
    if open_for > 0 and state ~= 1 then
      open(math.min(open_for, math.max(recovery, 600000)))
    elseif state == 0 then
      local streak = (h.streak or 0) + 1
      set({streak = streak})
      if count(1, 1) or (threshold > 0 and streak >= threshold) then open(recovery) end
    elseif state == 2 then
      open(recovery)
    end
  elseif op == 'trial' then
    -- Trials unanswered for a whole lease belong to clients that are gone.
    if state == 2 and now - (h.trial_at or 0) >= trial_lease then set({admitted = 0}) end
    if state == 1 and h['until'] >= 0 and now >= h['until'] then
      gen = gen + 1
      state = 2
      set({state = 2, gen = gen, admitted = 1, succeeded = 0, trial_at = now})
      granted = 1
    elseif state == 2 and (h.admitted or 0) < trials then
      set({admitted = (h.admitted or 0) + 1, trial_at = now})
      granted = 1
    end
  elseif op == 'trial_ok' and current and state == 2 then
    if (h.succeeded or 0) + 1 >= trials then close() else set({succeeded = (h.succeeded or 0) + 1}) end
  elseif op == 'trial_back' and current and state == 2 then
    set({admitted = math.max(0, (h.admitted or 0) - 1)})
  elseif op == 'isolate' and not (state == 1 and h['until'] == -1) then
    gen = gen + 1
    state = 1
    set({state = 1, gen = gen, ['until'] = -1})
  elseif op == 'reset' and (state ~= 0 or (h.streak or 0) > 0) then
    close()
  end

  local wait = 0
  if state == 1 then
    wait = (h['until'] == -1) and -1 or math.max(0, h['until'] - now)
  end
  -- A breaker left alone is forgotten after a while; an isolated one stays until reset.
  if state == 1 and wait == -1 then
    redis.call('PERSIST', key)
  else
    redis.call('PEXPIRE', key, int(math.max(wait, recovery, window) + 3600000))
  end
  return {state, gen, wait, granted, previous}
end
