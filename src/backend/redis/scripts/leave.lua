-- Takes waiters that gave up (a timeout, a cancelled task, Redis not answering) out of a limiter's
-- line for concurrency slots (see acquire.lua). A waiter not in line is withdrawn instead, for as long
-- as a place lasts: an ask of it that Redis runs late (after a stall) then takes nothing. One that
-- never says so leaves once its place expires.
-- KEYS[1] the line, KEYS[2] the line's places, KEYS[3] withdrawn ids; ARGV[1] a place's TTL (us),
-- ARGV[2..] the waiters. Returns how many were in line.
return function(KEYS, ARGV)
  local now, ttl = redis_now(), to_number(ARGV[1])
  for i = 2, #ARGV do
    call('ZREM', KEYS[2], ARGV[i])
  end
  return remove_or_withdraw(KEYS[1], KEYS[3], ARGV, 2, now, ttl)
end
