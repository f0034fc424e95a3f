-- recover: active jobs of one queue whose lease expired (their worker died).
-- Each stalls once more; above max_stalled it goes dead with a Stalled error,
-- otherwise back to waiting in its old place, its attempt given back.
-- KEYS[1] waiting  ZSET  score -priority, member string.format('%012x', ord) .. id
-- KEYS[2] active   ZSET  score lease expiry   KEYS[3] dead  ZSET  score finished_at
-- ARGV[1] key prefix of the queue   ARGV[2] now   ARGV[3] max_stalled
-- ARGV[4] channel to PUBLISH on when work appears
-- Returns triples: id, new state ('waiting' or 'dead'), seq.
local now, max_stalled = ARGV[2], tonumber(ARGV[3])
local expired = redis.call('ZRANGE', KEYS[2], '-inf', now, 'BYSCORE')
local was_empty = redis.call('ZCARD', KEYS[1]) == 0
local woke = false
local out = {}
for _, id in ipairs(expired) do
  local key = ARGV[1] .. 'job:' .. id
  local stalls = redis.call('HINCRBY', key, 'stalls', 1)
  local job = redis.call('HMGET', key, 'tries', 'errors', 'prio', 'ord', 'seq')
  redis.call('HDEL', key, 'token', 'lease')
  local state = 'waiting'
  if stalls > max_stalled then
    state = 'dead'
    local entry = '{"attempt":' .. (job[1] or '0') .. ',"type":"Stalled","message":"lease expired '
      .. stalls .. ' times, more than max_stalled=' .. ARGV[3] .. '","traceback":"","at":' .. now .. '}'
    local errors = job[2] and (string.sub(job[2], 1, -2) .. ',' .. entry .. ']') or ('[' .. entry .. ']')
    redis.call('HSET', key, 'state', 'dead', 'end', now, 'errors', errors)
    redis.call('ZADD', KEYS[3], now, id)
  else
    redis.call('HINCRBY', key, 'tries', -1)
    redis.call('HSET', key, 'state', 'waiting')
    redis.call('ZADD', KEYS[1], -(tonumber(job[3]) or 0), string.format('%012x', job[4]) .. id)
    woke = true
  end
  out[#out + 1] = id
  out[#out + 1] = state
  out[#out + 1] = job[5]
end
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
if was_empty and woke then
  redis.call('PUBLISH', ARGV[4], '')
end
return out
