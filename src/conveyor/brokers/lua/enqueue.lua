-- enqueue: store new jobs of one queue, in order, each id at most once.
-- A job with the id that has not ended is returned instead of storing a new
-- one; an ended one is replaced. With KEYS[7] (one server or Sentinel) the id
-- is looked up in every queue; without it (Cluster, where the other queues
-- live in other slots) only in this one.
-- KEYS[1] waiting  ZSET  score -priority, member string.format('%012x', ord) .. id
-- KEYS[2] delayed  ZSET  score run_at, member id
-- KEYS[3] counter  STRING  the queue's FIFO counter: one ord per job, never reused
-- KEYS[4] completed, KEYS[5] dead, KEYS[6] cancelled   ZSETs  score finished_at, member id
-- KEYS[7] (optional) queues  SET of every queue name: this queue is added to it
-- ARGV[1] store prefix ('P:'; a queue's keys start with 'P:{queue}:', a job is
--         the HASH 'P:{queue}:job:' .. id)   ARGV[2] queue   ARGV[3] now (created_at)
-- ARGV[4] channel to PUBLISH on when work appears
-- ARGV[5] the jobs as one JSON array (one argument, not eight a job: cheaper to
--         send) of 8 strings per job: id, seq, task, payload, priority,
--         options ('' = none), run_at ('' = none), state ('waiting' or 'delayed')
-- Returns one item per job: 1 when stored, else {queue, HGETALL} of the job holding the id.
local store, queue, now = ARGV[1], ARGV[2], ARGV[3]
local here = store .. '{' .. queue .. '}:'
local places = {{queue, here}}  -- where an id may be held: this queue first
if KEYS[7] then
  redis.call('SADD', KEYS[7], queue)
  for _, q in ipairs(redis.call('SMEMBERS', KEYS[7])) do
    if q ~= queue then places[#places + 1] = {q, store .. '{' .. q .. '}:'} end
  end
end
local ended = {completed = true, dead = true, cancelled = true}
local rows = cjson.decode(ARGV[5])
local n = #rows / 8
local ord = redis.call('INCRBY', KEYS[3], n) - n
local was_empty = redis.call('ZCARD', KEYS[1]) == 0
local head = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2]
local wake = false
local out = {}
for i = 1, #rows, 8 do
  local id, prio, opts, run_at, state = rows[i], rows[i + 4], rows[i + 5], rows[i + 6], rows[i + 7]
  local holder, old
  for _, place in ipairs(places) do
    old = redis.call('HGET', place[2] .. 'job:' .. id, 'state')
    if old then holder = place; break end
  end
  if old and not ended[old] then
    out[#out + 1] = {holder[1], redis.call('HGETALL', holder[2] .. 'job:' .. id)}
  else
    if old then
      redis.call('ZREM', holder[2] .. old, id)
      redis.call('DEL', holder[2] .. 'job:' .. id)
    end
    ord = ord + 1
    local fields = {'task', rows[i + 2], 'data', rows[i + 3], 'state', state,
                    'seq', rows[i + 1], 'ord', ord, 'made', now}
    if prio ~= '0' then fields[#fields + 1] = 'prio'; fields[#fields + 1] = prio end
    if opts ~= '' then fields[#fields + 1] = 'opts'; fields[#fields + 1] = opts end
    if run_at ~= '' then fields[#fields + 1] = 'run'; fields[#fields + 1] = run_at end
    redis.call('HSET', here .. 'job:' .. id, unpack(fields))
    if state == 'delayed' then
      redis.call('ZADD', KEYS[2], run_at, id)
      if not head or tonumber(run_at) < tonumber(head) then
        head, wake = run_at, true -- a sooner due time: sleepers should look again
      end
    else
      redis.call('ZADD', KEYS[1], -tonumber(prio), string.format('%012x', ord) .. id)
    end
    out[#out + 1] = 1
  end
end
if wake or (was_empty and redis.call('ZCARD', KEYS[1]) > 0) then
  redis.call('PUBLISH', ARGV[4], '')
end
return out
