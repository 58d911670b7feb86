-- Takes a waiter out of a limiter's line for concurrency slots (see acquire.lua): it gave up (its
-- timeout, a cancelled task). One that never says so leaves once its place expires.
-- KEYS[1] the line, KEYS[2] the line's places; ARGV[1] its ticket, ARGV[2] the waiter. Returns 1 if
-- it was in line.
local place = line_place(tonumber(ARGV[1]), ARGV[2])
redis.call('ZREM', KEYS[2], place)
return redis.call('ZREM', KEYS[1], place)
