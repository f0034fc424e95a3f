-- claim: promote the queue's due delayed jobs, then lease up to a limit of
-- its ready jobs in claim order (_shared: priority, then enqueue order).
-- KEYS[1] waiting  LIST   KEYS[2] prioritized  ZSET   (see _shared)
-- KEYS[3] delayed  ZSET  score run_at   KEYS[4] active  ZSET  score lease expiry
-- ARGV[1] key prefix of the queue   ARGV[2] now   ARGV[3] lease expiry
-- ARGV[4] worker   ARGV[5] lease token   ARGV[6] limit (>= 1)
-- ARGV[7] channel to PUBLISH on when jobs are left for others ('' = none)
-- KEYS[5] (optional) stamp (stamp.lua) set before a wait this claim was queued
--         behind: ARGV[2] and ARGV[3] are moved on by the time since then (or,
--         for a wall clock, to the server's clock now: stamp.lua says why).
--         Gone (interrupt() deletes it): the wait was interrupted, claim nothing.
-- A paused queue (its key prefix .. 'paused' set) hands out nothing; its due
-- delayed jobs still become waiting, and its marker goes (idle workers block
-- until resume.lua sets it again, rather than wake for nothing).
-- Returns pairs, in claim order: id, the job's HGETALL.
local prefix, now, expiry, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[6])
now, expiry = claim_times(KEYS[5], now, expiry)
if not now or promote_due_then_paused(prefix, KEYS[3], now) then return {} end

local ids = {}
local function take_members(members)
  for _, member in ipairs(members) do ids[#ids + 1] = string.sub(member, 13) end
  if #members > 0 then redis.call('ZREM', KEYS[2], unpack(members)) end
end
-- 1. priority above 0
take_members(redis.call('ZRANGE', KEYS[2], '-inf', '(0', 'BYSCORE', 'LIMIT', 0, limit))
-- 2. priority 0: the list, merged by ord with jobs that became ready again
while #ids < limit do
  local again = redis.call('ZRANGE', KEYS[2], 0, 0, 'BYSCORE', 'LIMIT', 0, 1)[1]
  if not again then
    for _, id in ipairs(redis.call('LPOP', KEYS[1], limit - #ids) or {}) do ids[#ids + 1] = id end
    break
  end
  local head = redis.call('LINDEX', KEYS[1], 0)
  if head and tonumber(redis.call('HGET', prefix .. 'job:' .. head, ORD))
      < tonumber(string.sub(again, 1, 12), 16) then
    redis.call('LPOP', KEYS[1])
    ids[#ids + 1] = head
  else
    take_members({again})
  end
end
-- 3. priority below 0
if #ids < limit then
  local popped = redis.call('ZPOPMIN', KEYS[2], limit - #ids)
  for i = 1, #popped, 2 do ids[#ids + 1] = string.sub(popped[i], 13) end
end

local out = lease(prefix, ids, KEYS[4], now, expiry, ARGV[5], ARGV[4])
settle(prefix, ARGV[7])
return out
