-- claim: promote the queue's due delayed jobs, then lease up to a limit of
-- its ready jobs (highest priority first, then enqueue order).
-- KEYS[1] waiting  ZSET  score -priority, member string.format('%012x', ord) .. id
-- KEYS[2] delayed  ZSET  score run_at, member id
-- KEYS[3] active   ZSET  score lease expiry, member id
-- ARGV[1] key prefix of the queue   ARGV[2] now   ARGV[3] lease expiry
-- ARGV[4] worker   ARGV[5] lease token   ARGV[6] limit (>= 1)
-- ARGV[7] channel to PUBLISH on when promoted jobs are left for others
-- Returns pairs, in claim order: id, the job's HGETALL.
local prefix, now = ARGV[1], ARGV[2]
local was_empty = redis.call('ZCARD', KEYS[1]) == 0
local due = redis.call('ZRANGE', KEYS[2], '-inf', now, 'BYSCORE')
for _, id in ipairs(due) do
  local key = prefix .. 'job:' .. id
  local job = redis.call('HMGET', key, 'prio', 'ord')
  redis.call('HSET', key, 'state', 'waiting')
  redis.call('ZADD', KEYS[1], -(tonumber(job[1]) or 0), string.format('%012x', job[2]) .. id)
end
if #due > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
local popped = redis.call('ZPOPMIN', KEYS[1], ARGV[6])
local out = {}
for i = 1, #popped, 2 do
  local id = string.sub(popped[i], 13)
  local key = prefix .. 'job:' .. id
  redis.call('HSET', key, 'state', 'active', 'start', now, 'token', ARGV[5],
             'lease', ARGV[3], 'worker', ARGV[4])
  redis.call('HINCRBY', key, 'tries', 1)
  redis.call('ZADD', KEYS[3], ARGV[3], id)
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGETALL', key)
end
if #due > 0 and was_empty and redis.call('ZCARD', KEYS[1]) > 0 then
  redis.call('PUBLISH', ARGV[7], '')
end
return out
