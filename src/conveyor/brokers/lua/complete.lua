-- complete: held jobs of one queue end as completed with their result.
-- A job carries a token only while it is active, so the token is the fence.
-- A key the job holds (_shared: unique keys) is held unique_for seconds more.
-- KEYS[1] active     ZSET  score lease expiry, member id
-- KEYS[2] completed  ZSET  score finished_at, member id
-- ARGV[1] key prefix of the queue   ARGV[2] now
-- ARGV[3] '1' when the queue has a concurrency cap: a claim that found it full
--         with work behind set prefix .. 'capped', and the slots freed here
--         wake a waiter ('' = no cap: nothing to look at)
-- ARGV[4] channel to PUBLISH on when work appears ('' = none)
-- ARGV[5..] triples: id, token, result
-- Returns one 1 (completed) or 0 (lease lost, nothing changed) per job.
local now = ARGV[2]
local out, ended, finished = {}, {}, {}
for i = 5, #ARGV, 3 do
  local id = ARGV[i]
  local key = ARGV[1] .. 'job:' .. id
  local job = redis.call('HMGET', key, TOKEN, UNIQUE)
  if job[1] == ARGV[i + 1] then
    redis.call('HSET', key, STATE, 'completed', END, now, RESULT, ARGV[i + 2])
    redis.call('HDEL', key, TOKEN, LEASE)
    if job[2] then end_unique(ARGV[1], job[2], id, 'completed', now) end
    ended[#ended + 1] = id
    finished[#finished + 1] = now
    finished[#finished + 1] = id
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if #ended > 0 then -- one call each for the whole batch
  redis.call('ZREM', KEYS[1], unpack(ended))
  redis.call('ZADD', KEYS[2], unpack(finished))
  if ARGV[3] == '1' and redis.call('DEL', ARGV[1] .. 'capped') == 1 then
    signal(ARGV[1], ARGV[4], false)
  end
end
return out
