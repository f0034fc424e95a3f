-- stamp: note the server's clock in a key for the claim that follows in the
-- same pipeline, after a BZPOPMIN (an idle worker's wait_and_claim): that
-- claim moves the caller's clock on by the time the wait took.
-- KEYS[1] the stamp  STRING  'seconds.microseconds', expires after 60 s
-- Returns 1.
local t = redis.call('TIME')
redis.call('SET', KEYS[1], t[1] .. '.' .. string.format('%06d', t[2]), 'EX', 60)
return 1
