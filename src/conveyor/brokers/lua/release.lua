-- release: held jobs of one queue go back to waiting, in their old place,
-- without spending an attempt (a stopping worker interrupted them).
-- KEYS[1] waiting  ZSET  score -priority, member string.format('%012x', ord) .. id
-- KEYS[2] active   ZSET  score lease expiry, member id
-- ARGV[1] key prefix of the queue   ARGV[2] channel to PUBLISH on when work appears
-- ARGV[3..] pairs: id, token
-- Returns how many were released.
local was_empty = redis.call('ZCARD', KEYS[1]) == 0
local released = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local key = ARGV[1] .. 'job:' .. id
  local job = redis.call('HMGET', key, 'token', 'prio', 'ord')
  if job[1] == ARGV[i + 1] then
    redis.call('HINCRBY', key, 'tries', -1)
    redis.call('HSET', key, 'state', 'waiting')
    redis.call('HDEL', key, 'token', 'lease')
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZADD', KEYS[1], -(tonumber(job[2]) or 0), string.format('%012x', job[3]) .. id)
    released = released + 1
  end
end
if was_empty and released > 0 then
  redis.call('PUBLISH', ARGV[2], '')
end
return released
