-- retry: dead (or, by id, cancelled) jobs of one queue start over in waiting,
-- same id and place, fresh attempts and stalls, error history kept.
-- KEYS[1] waiting  ZSET  score -priority, member string.format('%012x', ord) .. id
-- KEYS[2] dead     ZSET  score finished_at   KEYS[3] cancelled  ZSET  score finished_at
-- ARGV[1] key prefix of the queue   ARGV[2] channel to PUBLISH on when work appears
-- ARGV[3..] job ids; none means every dead job of the queue
-- Returns how many moved.
local ids = {}
for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
if #ids == 0 then ids = redis.call('ZRANGE', KEYS[2], 0, -1) end
local from = {dead = KEYS[2], cancelled = KEYS[3]}
local was_empty = redis.call('ZCARD', KEYS[1]) == 0
local moved = 0
for _, id in ipairs(ids) do
  local key = ARGV[1] .. 'job:' .. id
  local job = redis.call('HMGET', key, 'state', 'prio', 'ord')
  if from[job[1]] then
    redis.call('ZREM', from[job[1]], id)
    redis.call('HDEL', key, 'tries', 'stalls', 'end')
    redis.call('HSET', key, 'state', 'waiting')
    redis.call('ZADD', KEYS[1], -(tonumber(job[2]) or 0), string.format('%012x', job[3]) .. id)
    moved = moved + 1
  end
end
if was_empty and moved > 0 then
  redis.call('PUBLISH', ARGV[2], '')
end
return moved
