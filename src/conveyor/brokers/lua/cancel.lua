-- cancel: a waiting or delayed job of one queue ends as cancelled.
-- KEYS[1] waiting  ZSET  score -priority, member string.format('%012x', ord) .. id
-- KEYS[2] delayed  ZSET  score run_at   KEYS[3] cancelled  ZSET  score finished_at
-- ARGV[1] key prefix of the queue   ARGV[2] id   ARGV[3] now
-- Returns 1, or 0 when the job is not here or has started.
local id, now = ARGV[2], ARGV[3]
local key = ARGV[1] .. 'job:' .. id
local job = redis.call('HMGET', key, 'state', 'ord')
if job[1] == 'waiting' then
  redis.call('ZREM', KEYS[1], string.format('%012x', job[2]) .. id)
elseif job[1] == 'delayed' then
  redis.call('ZREM', KEYS[2], id)
else
  return 0
end
redis.call('HSET', key, 'state', 'cancelled', 'end', now)
redis.call('ZADD', KEYS[3], now, id)
return 1
