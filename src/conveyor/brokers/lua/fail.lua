-- fail: record a failed run of a held job, then retry it later or send it dead.
-- KEYS[1] prioritized  ZSET (see _shared)   KEYS[2] delayed  ZSET  score run_at
-- KEYS[3] active  ZSET  score lease expiry   KEYS[4] dead  ZSET  score finished_at
-- ARGV[1] key prefix of the queue   ARGV[2] now   ARGV[3] id   ARGV[4] token
-- ARGV[5] the error as JSON without its first field: ',"type":...,"at":now}'
-- ARGV[6] next state: 'delayed', 'waiting' or 'dead'   ARGV[7] retry_at ('' when dead)
-- ARGV[8] channel to PUBLISH on when work appears ('' = none)
-- Dead: a key the job holds (_shared: unique keys) is held unique_for seconds more.
-- A slot of a full concurrency cap (prefix .. 'capped' set by a claim) frees:
-- an idle waiter is woken.
-- Returns 1, or 0 when the lease was lost (nothing changed).
local prefix, now, id, state = ARGV[1], ARGV[2], ARGV[3], ARGV[6]
local key = prefix .. 'job:' .. id
local job = redis.call('HMGET', key, TOKEN, TRIES, ERRORS, PRIO, ORD, UNIQUE)
if job[1] ~= ARGV[4] then
  return 0
end
local entry = '{"attempt":' .. (job[2] or '0') .. ARGV[5]
local errors = job[3] and (string.sub(job[3], 1, -2) .. ',' .. entry .. ']') or ('[' .. entry .. ']')
redis.call('HSET', key, STATE, state, ERRORS, errors)
redis.call('HDEL', key, TOKEN, LEASE)
redis.call('ZREM', KEYS[3], id)
if redis.call('DEL', prefix .. 'capped') == 1 then signal(prefix, ARGV[8], false) end
if state == 'dead' then
  redis.call('HSET', key, END, now)
  redis.call('ZADD', KEYS[4], now, id)
  if job[6] then end_unique(prefix, job[6], id, 'dead', now) end
  return 1
end
redis.call('HSET', key, RUN, ARGV[7])
if state == 'delayed' then
  local head = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2]
  redis.call('ZADD', KEYS[2], ARGV[7], id)
  if not head or tonumber(ARGV[7]) < tonumber(head) then
    signal(prefix, ARGV[8], true)
  end
else
  requeue(prefix, id, job[4], job[5])
  signal(prefix, ARGV[8], false)
end
return 1
