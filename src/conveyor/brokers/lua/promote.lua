-- promote: delayed jobs of one queue become waiting now.
-- KEYS[1] waiting  ZSET  score -priority, member string.format('%012x', ord) .. id
-- KEYS[2] delayed  ZSET  score run_at, member id
-- ARGV[1] key prefix of the queue   ARGV[2] channel to PUBLISH on when work appears
-- ARGV[3] 'due' (those with run_at <= ARGV[4]), 'all', or 'ids' (the ids in ARGV[4..])
-- Returns how many moved.
local ids
if ARGV[3] == 'ids' then
  ids = {}
  for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
elseif ARGV[3] == 'due' then
  ids = redis.call('ZRANGE', KEYS[2], '-inf', ARGV[4], 'BYSCORE')
else
  ids = redis.call('ZRANGE', KEYS[2], 0, -1)
end
local was_empty = redis.call('ZCARD', KEYS[1]) == 0
local moved = 0
for _, id in ipairs(ids) do
  local key = ARGV[1] .. 'job:' .. id
  local job = redis.call('HMGET', key, 'state', 'prio', 'ord')
  if job[1] == 'delayed' then
    redis.call('ZREM', KEYS[2], id)
    redis.call('HSET', key, 'state', 'waiting')
    redis.call('ZADD', KEYS[1], -(tonumber(job[2]) or 0), string.format('%012x', job[3]) .. id)
    moved = moved + 1
  end
end
if was_empty and moved > 0 then
  redis.call('PUBLISH', ARGV[2], '')
end
return moved
