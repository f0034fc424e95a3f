-- recover: active jobs of one queue whose lease expired (their worker died).
-- Each stalls once more; above max_stalled it goes dead with a Stalled error,
-- otherwise back to waiting in its old place, its attempt given back. A dead
-- job's key (_shared: unique keys) is held unique_for seconds more.
-- KEYS[1] prioritized  ZSET (see _shared)
-- KEYS[2] active   ZSET  score lease expiry   KEYS[3] dead  ZSET  score finished_at
-- ARGV[1] key prefix of the queue   ARGV[2] now   ARGV[3] max_stalled
-- ARGV[4] channel to PUBLISH on when work appears ('' = none)
-- Returns triples: id, new state ('waiting' or 'dead'), seq.
local prefix, now, max_stalled = ARGV[1], ARGV[2], tonumber(ARGV[3])
local expired = redis.call('ZRANGE', KEYS[2], '-inf', now, 'BYSCORE')
local woke = false
local out = {}
for _, id in ipairs(expired) do
  local key = prefix .. 'job:' .. id
  local stalls = redis.call('HINCRBY', key, STALLS, 1)
  local job = redis.call('HMGET', key, TRIES, ERRORS, PRIO, ORD, SEQ, UNIQUE)
  redis.call('HDEL', key, TOKEN, LEASE)
  local state = 'waiting'
  if stalls > max_stalled then
    state = 'dead'
    local entry = '{"attempt":' .. (job[1] or '0') .. ',"type":"Stalled","message":"lease expired '
      .. stalls .. ' times, more than max_stalled=' .. ARGV[3] .. '","traceback":"","at":' .. now .. '}'
    local errors = job[2] and (string.sub(job[2], 1, -2) .. ',' .. entry .. ']') or ('[' .. entry .. ']')
    redis.call('HSET', key, STATE, 'dead', END, now, ERRORS, errors)
    redis.call('ZADD', KEYS[3], now, id)
    if job[6] then end_unique(prefix, job[6], id, 'dead', now) end
  else
    redis.call('HINCRBY', key, TRIES, -1)
    redis.call('HSET', key, STATE, 'waiting')
    requeue(prefix, id, job[3], job[4])
    woke = true
  end
  out[#out + 1] = id
  out[#out + 1] = state
  out[#out + 1] = job[5]
end
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
if woke then signal(prefix, ARGV[4], false) end
return out
