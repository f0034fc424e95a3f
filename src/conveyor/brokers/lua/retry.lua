-- retry: dead (or, by id, cancelled) jobs of one queue start over in waiting,
-- same id and place, fresh attempts and stalls, error history kept.
-- KEYS[1] prioritized  ZSET (see _shared)
-- KEYS[2] dead     ZSET  score finished_at   KEYS[3] cancelled  ZSET  score finished_at
-- ARGV[1] key prefix of the queue   ARGV[2] channel to PUBLISH on when work appears ('' = none)
-- ARGV[3..] job ids; none means every dead job of the queue
-- Returns how many moved.
local prefix = ARGV[1]
local ids = {}
for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
if #ids == 0 then ids = redis.call('ZRANGE', KEYS[2], 0, -1) end
local from = {dead = KEYS[2], cancelled = KEYS[3]}
local moved = 0
for _, id in ipairs(ids) do
  local key = prefix .. 'job:' .. id
  local job = redis.call('HMGET', key, STATE, PRIO, ORD)
  if from[job[1]] then
    redis.call('ZREM', from[job[1]], id)
    redis.call('HDEL', key, TRIES, STALLS, END)
    redis.call('HSET', key, STATE, 'waiting')
    requeue(prefix, id, job[2], job[3])
    moved = moved + 1
  end
end
if moved > 0 then signal(prefix, ARGV[2], false) end
return moved
