-- Takes back leases whose client gave up on them: an acquire that timed out on the client (Redis may
-- run it later, after a stall, or may have run it already), or a release that could not be sent. A
-- lease held is removed; one not there yet is withdrawn, so that the acquire arriving late takes
-- nothing (acquire.lua). Withdrawals are kept as long as a lease would be, then forgotten.
-- KEYS[1] the lease sorted set, KEYS[2] withdrawn lease ids; ARGV[1] the lease TTL (us), ARGV[2..] ids.
-- Returns the number of leases removed.
return function(KEYS, ARGV)
  return remove_or_withdraw(KEYS[1], KEYS[2], ARGV, 2, redis_now(), to_number(ARGV[1]))
end
