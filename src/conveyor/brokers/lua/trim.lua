-- trim: delete ended jobs of one queue in one state: all but the `keep` most
-- recently finished, and all finished before `older_than`, at most `limit` of
-- them per call (oldest first) so one call never blocks the server for long;
-- the caller calls again while a call deletes `limit`.
-- KEYS[1] the state's ZSET (completed, dead or cancelled)  score finished_at, member id
-- ARGV[1] key prefix of the queue   ARGV[2] keep ('' = no limit)
-- ARGV[3] older_than ('' = none)    ARGV[4] limit: most jobs deleted by this call
-- ARGV[5] (optional) '1': the jobs have not ended (purge of delayed jobs): a
--         key one held (_shared: unique keys) is free. Ended jobs keep theirs.
-- Returns how many were deleted.
local limit = tonumber(ARGV[4])
local doomed = {}
if ARGV[3] ~= '' then
  doomed = redis.call('ZRANGE', KEYS[1], '-inf', '(' .. ARGV[3], 'BYSCORE', 'LIMIT', 0, limit)
end
if ARGV[2] ~= '' and #doomed < limit then
  -- the oldest beyond `keep` (ranks 0 .. extra-1); ids already taken by age come first
  local extra = math.min(redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2]), limit)
  if extra > #doomed then doomed = redis.call('ZRANGE', KEYS[1], 0, extra - 1) end
end
for _, id in ipairs(doomed) do
  local key = ARGV[1] .. 'job:' .. id
  if ARGV[5] then
    local ukey = redis.call('HGET', key, UNIQUE)
    if ukey then unlock_unique(ARGV[1], ukey, id) end
  end
  redis.call('DEL', key)
end
if #doomed > 0 then redis.call('ZREM', KEYS[1], unpack(doomed)) end
return #doomed
