-- trim: delete ended jobs of one queue in one state: all but the `keep` most
-- recently finished, and all finished before `older_than`.
-- KEYS[1] the state's ZSET (completed, dead or cancelled)  score finished_at, member id
-- ARGV[1] key prefix of the queue   ARGV[2] keep ('' = no limit)   ARGV[3] older_than ('' = none)
-- Returns how many were deleted.
local doomed = {}
if ARGV[3] ~= '' then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], '-inf', '(' .. ARGV[3], 'BYSCORE')) do
    doomed[id] = true
  end
end
if ARGV[2] ~= '' then
  local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2])
  if extra > 0 then
    for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, extra - 1)) do doomed[id] = true end
  end
end
local deleted = 0
for id in pairs(doomed) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('DEL', ARGV[1] .. 'job:' .. id)
  deleted = deleted + 1
end
return deleted
