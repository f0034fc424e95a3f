-- purge: delete up to a limit of one queue's waiting jobs (the ready line's,
-- then those held in bucket lines: _limits), so one
-- call never blocks the server for long; the caller calls again while a call
-- deletes `limit`. (Delayed and ended jobs go through trim.lua, keep 0.)
-- KEYS[1] waiting  LIST   KEYS[2] prioritized  ZSET   (see _shared)
-- ARGV[1] key prefix of the queue   ARGV[2] limit: most jobs deleted by this call
-- A key a deleted job held (_shared: unique keys) is free: it never ran.
-- Returns {ids taken off the ready keys, jobs deleted} (an id whose job is not
-- waiting is only taken off).
local prefix, limit = ARGV[1], tonumber(ARGV[2])
local ids = redis.call('LPOP', KEYS[1], limit) or {}
if #ids < limit then
  local popped = redis.call('ZPOPMIN', KEYS[2], limit - #ids)
  for i = 1, #popped, 2 do ids[#ids + 1] = string.sub(popped[i], 13) end
end
if #ids < limit then
  for _, bucket in ipairs(redis.call('ZRANGE', prefix .. 'buckets', 0, limit - #ids - 1)) do
    local popped = redis.call('ZPOPMIN', prefix .. 'rl-ready:' .. bucket, limit - #ids)
    for i = 1, #popped, 2 do ids[#ids + 1] = string.sub(popped[i], 13) end
    unhold(prefix, bucket, #popped / 2)
    if #ids >= limit then break end
  end
end
local deleted = 0
for _, id in ipairs(ids) do
  local key = prefix .. 'job:' .. id
  local job = redis.call('HMGET', key, STATE, UNIQUE)
  if job[1] == 'waiting' then
    if job[2] then unlock_unique(prefix, job[2], id) end
    redis.call('DEL', key)
    deleted = deleted + 1
  end
end
if ready_count(prefix) == 0 then redis.call('DEL', prefix .. 'marker') end
return {#ids, deleted}
