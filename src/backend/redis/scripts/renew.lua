-- Extends the leases still held by a live process, so only a dead process's leases expire.
-- KEYS[1] the lease sorted set; ARGV[1] the TTL (us); ARGV[2..] lease ids.
-- ZADD XX: a lease that expired already (and may have been taken over) is not brought back.
return function(KEYS, ARGV)
  local expiry = redis_now() + to_number(ARGV[1])
  for i = 2, #ARGV do
    call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
  end
  call('PEXPIRE', KEYS[1], ceil(to_number(ARGV[1]) / 1000) + 1000)
  return #ARGV - 1
end
