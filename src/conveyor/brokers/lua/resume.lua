-- resume: take a queue's paused mark away, and wake an idle worker (its
-- ready jobs, and delayed ones that came due meanwhile, can be claimed again).
-- KEYS[1] paused  STRING, set while the queue is paused (claim.lua hands out nothing)
-- ARGV[1] key prefix of the queue   ARGV[2] channel to PUBLISH on ('' = none)
-- Returns 1, or 0 when the queue was not paused.
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
signal(ARGV[1], ARGV[2], true)
return 1
