-- release: held jobs of one queue go back to waiting, in their old place,
-- without spending an attempt (a stopping worker interrupted them).
-- KEYS[1] prioritized  ZSET (see _shared)   KEYS[2] active  ZSET  score lease expiry
-- ARGV[1] key prefix of the queue   ARGV[2] channel to PUBLISH on when work appears ('' = none)
-- ARGV[3..] pairs: id, token
-- Their slots of a full concurrency cap (prefix .. 'capped') free too: the
-- waiter the signal wakes may take one.
-- Returns how many were released.
local prefix = ARGV[1]
local released = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local key = prefix .. 'job:' .. id
  local job = redis.call('HMGET', key, TOKEN, PRIO, ORD)
  if job[1] == ARGV[i + 1] then
    redis.call('HINCRBY', key, TRIES, -1)
    redis.call('HSET', key, STATE, 'waiting')
    redis.call('HDEL', key, TOKEN, LEASE)
    redis.call('ZREM', KEYS[2], id)
    requeue(prefix, id, job[2], job[3])
    released = released + 1
  end
end
if released > 0 then
  redis.call('DEL', prefix .. 'capped')
  signal(prefix, ARGV[2], false)
end
return released
