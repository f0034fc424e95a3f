-- cancel: a waiting or delayed job of one queue ends as cancelled. A waiting
-- job is in the ready line, or held in its bucket's line (_limits). A key it
-- holds (_shared: unique keys) is held unique_for seconds more.
-- KEYS[1] waiting  LIST   KEYS[2] prioritized  ZSET   (see _shared)
-- KEYS[3] delayed  ZSET  score run_at   KEYS[4] cancelled  ZSET  score finished_at
-- ARGV[1] key prefix of the queue   ARGV[2] id   ARGV[3] now
-- ARGV[4] channel ('' = none)
-- Returns 1, or 0 when the job is not here or has started.
local prefix, id, now = ARGV[1], ARGV[2], ARGV[3]
local key = prefix .. 'job:' .. id
local job = redis.call('HMGET', key, STATE, ORD, TASK, RKEY, UNIQUE)
if job[1] == 'waiting' then
  local member = ready_member(job[2], id)
  if redis.call('ZREM', KEYS[2], member) == 0 then
    local bucket = bucket_of(job[3], job[4] or nil)
    if redis.call('ZREM', prefix .. 'rl-ready:' .. bucket, member) == 1 then
      unhold(prefix, bucket, 1)
    else
      redis.call('LREM', KEYS[1], 1, id)
    end
  end
  settle(prefix, ARGV[4])
elseif job[1] == 'delayed' then
  redis.call('ZREM', KEYS[3], id)
else
  return 0
end
redis.call('HSET', key, STATE, 'cancelled', END, now)
redis.call('ZADD', KEYS[4], now, id)
if job[5] then end_unique(prefix, job[5], id, 'cancelled', now) end
return 1
