-- retry: dead (or, by id, cancelled) jobs of one queue start over in waiting,
-- same id and place, fresh attempts and stalls, error history kept. A key
-- (_shared: unique keys) still held for a job, its hold not run out at now,
-- is its again until it ends.
-- KEYS[1] prioritized  ZSET (see _shared)
-- KEYS[2] dead     ZSET  score finished_at   KEYS[3] cancelled  ZSET  score finished_at
-- ARGV[1] key prefix of the queue   ARGV[2] channel to PUBLISH on when work appears ('' = none)
-- ARGV[3] now   ARGV[4..] job ids; none means every dead job of the queue
-- Returns how many moved.
local prefix = ARGV[1]
local ids = {}
for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
if #ids == 0 then ids = redis.call('ZRANGE', KEYS[2], 0, -1) end
local from = {dead = KEYS[2], cancelled = KEYS[3]}
local moved = 0
for _, id in ipairs(ids) do
  local key = prefix .. 'job:' .. id
  local job = redis.call('HMGET', key, STATE, PRIO, ORD, UNIQUE)
  if from[job[1]] then
    redis.call('ZREM', from[job[1]], id)
    redis.call('HDEL', key, TRIES, STALLS, END)
    redis.call('HSET', key, STATE, 'waiting')
    requeue(prefix, id, job[2], job[3])
    moved = moved + 1
    if job[4] then
      local lock = unique_lock(prefix, job[4])
      local held = redis.call('HMGET', lock, 'j', 'x')
      if held[1] == id and held[2] and tonumber(held[2]) > tonumber(ARGV[3]) then
        redis.call('HDEL', lock, 's', 'e', 'x')
        redis.call('PERSIST', lock)
      end
    end
  end
end
if moved > 0 then signal(prefix, ARGV[2], false) end
return moved
