-- promote: delayed jobs of one queue become waiting now.
-- KEYS[1] prioritized  ZSET (see _shared)   KEYS[2] delayed  ZSET  score run_at, member id
-- ARGV[1] key prefix of the queue   ARGV[2] channel to PUBLISH on when work appears ('' = none)
-- ARGV[3] 'due' (those with run_at <= ARGV[4]), 'all', or 'ids' (the ids in ARGV[4..])
-- Returns how many moved.
local prefix = ARGV[1]
local ids
if ARGV[3] == 'ids' then
  ids = {}
  for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
elseif ARGV[3] == 'due' then
  ids = redis.call('ZRANGE', KEYS[2], '-inf', ARGV[4], 'BYSCORE')
else
  ids = redis.call('ZRANGE', KEYS[2], 0, -1)
end
local moved = 0
for _, id in ipairs(ids) do
  local key = prefix .. 'job:' .. id
  local job = redis.call('HMGET', key, STATE, PRIO, ORD)
  if job[1] == 'delayed' then
    redis.call('ZREM', KEYS[2], id)
    redis.call('HSET', key, STATE, 'waiting')
    requeue(prefix, id, job[2], job[3])
    moved = moved + 1
  end
end
if moved > 0 then signal(prefix, ARGV[2], false) end
return moved
