-- stamp: note the server's clock in a key for the claim that follows in the
-- same pipeline, after a BZPOPMIN (an idle worker's wait_and_claim): that
-- claim moves the caller's clock on by the time the wait took. When the
-- caller's clock is the wall clock (ARGV[1] '1'), the claim takes the server's
-- clock when it runs instead: exact, where moving the caller's time on would
-- date it early by the time between the caller reading its clock and this
-- stamp (a start logged early leaves a rate window early).
-- KEYS[1] the stamp  STRING  'seconds.microseconds' ('=' first: take the
--         server's clock), expires after 60 s
-- ARGV[1] '1' when the caller's clock is the wall clock ('' = another clock)
-- Returns 1.
local t = redis.call('TIME')
local mark = ARGV[1] == '1' and '=' or ''
redis.call('SET', KEYS[1], mark .. t[1] .. '.' .. string.format('%06d', t[2]), 'EX', 60)
return 1
