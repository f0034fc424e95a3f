-- extend: push back the expiry of held leases of one queue.
-- KEYS[1] active  ZSET  score lease expiry, member id
-- ARGV[1] key prefix of the queue   ARGV[2] new expiry   ARGV[3..] pairs: id, token
-- Returns the ids whose lease was lost (token no longer on the job).
local out = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local key = ARGV[1] .. 'job:' .. id
  if redis.call('HGET', key, TOKEN) == ARGV[i + 1] then
    redis.call('HSET', key, LEASE, ARGV[2])
    redis.call('ZADD', KEYS[1], ARGV[2], id)
  else
    out[#out + 1] = id
  end
end
return out
