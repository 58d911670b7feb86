-- Extends the leases still held by a live process, so only a dead process's leases expire.
-- KEYS[1] the lease sorted set, KEYS[2] the limit's state hash; ARGV[1] the TTL (us); ARGV[2..] lease ids.
-- ZADD XX: a lease that is gone (released, or expired and maybe taken over) is not brought back, since
-- a renewal may cross its release. Except for a lease's TTL after Redis lost the limit's state
-- ("restoring", see acquire.lua): then a lease this live process holds and Redis no longer has was
-- lost, and is put back in place of one of the stand-ins that held it meanwhile.
return function(KEYS, ARGV)
  local lease_key, state = KEYS[1], KEYS[2]
  local now, ttl = redis_now(), to_number(ARGV[1])
  local restoring = select(6, limit_state(call('HGET', state, 'limit')))
  for i = 2, #ARGV do
    local id = ARGV[i]
    if restoring > now and not call('ZSCORE', lease_key, id) then
      call('ZADD', lease_key, now + ttl, id)
      local stand_ins = to_number(call('HGET', state, 'stand_ins') or '0')
      if stand_ins > 0 then
        call('ZREM', lease_key, 'recalled:' .. stand_ins)
        call('HSET', state, 'stand_ins', stand_ins - 1)
      end
    else
      call('ZADD', lease_key, 'XX', now + ttl, id)
    end
  end
  call('PEXPIRE', lease_key, ceil(ttl / 1000) + 1000)
  return #ARGV - 1
end
