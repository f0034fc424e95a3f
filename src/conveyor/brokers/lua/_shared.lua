-- _shared: helpers every script starts with (prepended when it is loaded).
--
-- A queue's ready jobs live in two keys of the queue (prefix 'P:{queue}:'):
--   waiting      LIST of ids, oldest on the left: new jobs of priority 0, the
--                common case, appended in enqueue order (a few bytes a job)
--   prioritized  ZSET scored -priority, each member the job's ord in 12 hex
--                digits then its id: jobs of any other priority, and every job
--                that becomes ready again later (due, released, recovered,
--                retried), so it takes back its enqueue-order place
-- Claim order: scores below 0 (priority > 0), then score 0 merged with the
-- list by ord, then scores above 0. ord comes from the queue's 'counter' and
-- is stored on every job.
--   marker       ZSET holding one member while the queue may have ready work
--                nobody claimed: idle workers block on it with BZPOPMIN. In a
--                Cluster, where one BZPOPMIN cannot watch queues in different
--                slots, the scripts also PUBLISH on the queue's channel when
--                they set it.

-- The fields of a job's HASH have one-letter names: every stored job pays
-- for its field names, and on a small waiting job the full words were a
-- tenth of its memory (redis_store.py's docstring has the same table).
local TASK, DATA, STATE, SEQ, ORD, MADE = 't', 'd', 's', 'q', 'n', 'c'
local PRIO, OPTS, RUN, TRIES, STALLS = 'p', 'o', 'r', 'a', 'k'
local START, END, TOKEN, LEASE, WORKER, RESULT, ERRORS = 'b', 'e', 'f', 'l', 'w', 'v', 'x'
local RKEY = 'g' -- rate_key: picks the job's bucket when its task is rate-limited (_limits)

local function ready_member(ord, id)
  return string.format('%012x', ord) .. id
end

-- Make a job ready again in its enqueue-order place.
local function requeue(prefix, id, prio, ord)
  redis.call('ZADD', prefix .. 'prioritized', -(tonumber(prio) or 0), ready_member(ord, id))
end

local function ready_count(prefix)
  return redis.call('LLEN', prefix .. 'waiting') + redis.call('ZCARD', prefix .. 'prioritized')
end

-- Work may be ready, or (`force`) a sooner delayed job appeared and waiters
-- must look again at when to wake. Without a channel: set the marker, which
-- wakes one BZPOPMIN. In a Cluster (channel given) the marker only records
-- that ready work was announced: publish when it was not set yet, or when
-- `force` (which leaves it alone: no job is ready yet).
local function signal(prefix, channel, force)
  if channel == '' then
    redis.call('ZADD', prefix .. 'marker', 0, '0')
  elseif force or redis.call('ZADD', prefix .. 'marker', 0, '0') == 1 then
    redis.call('PUBLISH', channel, '')
  end
end

-- After jobs were taken or removed: clear the marker once nothing is ready
-- (so the next new job publishes again), else keep it set for the next idle
-- worker.
local function settle(prefix, channel)
  if ready_count(prefix) == 0 then
    redis.call('DEL', prefix .. 'marker')
  else
    signal(prefix, channel, false)
  end
end

-- Unique keys (options(unique_for=...)). A job that took one carries it in
-- its UNIQUE field; the key's lock is the HASH prefix .. 'unique:' .. key:
--   j  the id of the job holding it    f  unique_for (seconds)
--   c  that job's created_at           x  when the hold runs out, set when
--   s, e  the state it ended in, and finished_at  (the job ends, with a TTL
--                                                  of unique_for + 1 s)
-- While its job has not ended the lock has no x and no TTL.
local UNIQUE = 'u'

local function unique_lock(prefix, ukey)
  return prefix .. 'unique:' .. ukey
end

-- Job `id` ended as `state` at `now`: the key it holds (if still its own and
-- not ended already) is held unique_for seconds more, then expires.
local function end_unique(prefix, ukey, id, state, now)
  local lock = unique_lock(prefix, ukey)
  local held = redis.call('HMGET', lock, 'j', 'f', 'x')
  if held[1] ~= id or held[3] then return end
  local unique_for = tonumber(held[2])
  redis.call('HSET', lock, 's', state, 'e', now,
             'x', string.format('%.17g', tonumber(now) + unique_for))
  redis.call('PEXPIRE', lock, math.ceil(unique_for * 1000) + 1000)
end

-- Job `id` is deleted before it ended (purge): the key it holds is free.
local function unlock_unique(prefix, ukey, id)
  local lock = unique_lock(prefix, ukey)
  local held = redis.call('HMGET', lock, 'j', 'x')
  if held[1] == id and not held[2] then redis.call('DEL', lock) end
end


-- The start of every claim (claim.lua, claim_limited.lua). `stamp` is the key
-- of the stamp (stamp.lua) set before a wait this claim was queued behind, or
-- nil. Returns the claim's now and lease expiry: moved on by the time the wait
-- took (or, for a wall clock, to the server's clock now: stamp.lua says why);
-- nil when the stamp is gone (interrupt() deleted it: claim nothing).
local function claim_times(stamp, now, expiry)
  if not stamp then return now, expiry end
  local stamped = redis.call('GET', stamp)
  if not stamped then return nil end
  local t = redis.call('TIME')
  local clock = t[1] + t[2] / 1e6
  redis.call('DEL', stamp)
  local moved -- how far to move the caller's clock on
  if string.sub(stamped, 1, 1) == '=' then
    moved = clock - tonumber(now) -- a wall clock: to the server's, now
  else
    moved = clock - tonumber(stamped) -- another clock: by the time the wait took
  end
  return string.format('%.6f', tonumber(now) + moved),
         string.format('%.6f', tonumber(expiry) + moved)
end

-- Also at every claim's start: the queue's delayed jobs due by `now` become
-- waiting. Then true when the queue is paused: it hands out nothing, and its
-- marker goes (idle workers block until resume.lua sets it again, rather than
-- wake for nothing).
local function promote_due_then_paused(prefix, delayed, now)
  local due = redis.call('ZRANGE', delayed, '-inf', now, 'BYSCORE')
  for _, id in ipairs(due) do
    local key = prefix .. 'job:' .. id
    local job = redis.call('HMGET', key, PRIO, ORD)
    redis.call('HSET', key, STATE, 'waiting')
    requeue(prefix, id, job[1], job[2])
  end
  if #due > 0 then
    redis.call('ZREMRANGEBYSCORE', delayed, '-inf', now)
  end
  if redis.call('EXISTS', prefix .. 'paused') == 1 then
    redis.call('DEL', prefix .. 'marker')
    return true
  end
  return false
end

-- The end of every claim: lease the jobs `ids` to a worker (ARGV: its name,
-- its token) until `expiry` in the queue's `active` ZSET. Returns pairs, in
-- claim order: id, the job's HGETALL.
local function lease(prefix, ids, active, now, expiry, token, worker)
  local out, leased = {}, {}
  for _, id in ipairs(ids) do
    local key = prefix .. 'job:' .. id
    redis.call('HSET', key, STATE, 'active', START, now, TOKEN, token, LEASE, expiry, WORKER, worker)
    redis.call('HINCRBY', key, TRIES, 1)
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGETALL', key)
    leased[#leased + 1] = expiry
    leased[#leased + 1] = id
  end
  if #leased > 0 then redis.call('ZADD', active, unpack(leased)) end
  return out
end
