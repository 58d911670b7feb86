-- Takes back leases whose client gave up on them: an acquire that timed out on the client (Redis may
-- run it later, after a stall, or may have run it already), or a release that could not be sent. A
-- lease held is removed; one not there yet is withdrawn, so that the acquire arriving late takes
-- nothing (acquire.lua). Withdrawals are kept as long as a lease would be, then forgotten.
-- KEYS[1] the lease sorted set, KEYS[2] withdrawn lease ids; ARGV[1] the lease TTL (us), ARGV[2..] ids.
-- Returns the number of leases removed.
local now = redis_now()
local ttl = tonumber(ARGV[1])
local removed = 0
for i = 2, #ARGV do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    removed = removed + 1
  else
    redis.call('ZADD', KEYS[2], now + ttl, ARGV[i])
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PEXPIRE', KEYS[2], math.ceil(ttl / 1000) + 1000)
end
return removed
