-- fire: claim schedule ticks of one queue and enqueue their jobs.
-- A tick is claimed when the schedule's last tick (its field in the queue's
-- schedules HASH) is missing or earlier: the field becomes the tick and the
-- job is stored as enqueue.lua stores a job whose id the caller chose (a job
-- holding the id that has not ended is left alone, the tick still recorded;
-- an ended one is replaced). A tick not later than the last one changes
-- nothing: the field, not the job, guards against firing a tick twice, so a
-- trimmed or purged job cannot let a late worker fire its tick again.
-- Periodic jobs are never delayed: each goes straight to the ready keys.
-- KEYS[1] waiting  LIST   KEYS[2] prioritized  ZSET   (see _shared)
-- KEYS[3] counter  STRING  the queue's FIFO counter: one ord per job, never reused
-- KEYS[4] schedules  HASH  schedule name -> its last tick (whole seconds since the epoch)
-- KEYS[5] (optional) queues  SET of every queue name: this queue is added to it,
--         and a job id is looked up in every queue (one server or Sentinel)
-- ARGV[1] store prefix ('P:'; a job is the HASH 'P:{queue}:job:' .. id)   ARGV[2] queue
-- ARGV[3] created_at in whole microseconds; '' = each job's seq is its created_at
-- ARGV[4] channel to PUBLISH on when work appears ('' = none)
-- ARGV[5..] 9 strings per tick: schedule name, tick, job id, seq, task, payload,
--         priority, options ('' = none), rate_key ('' = none)
-- Returns one item per tick: 1 when its job was stored, else 0.
local store, queue, made = ARGV[1], ARGV[2], ARGV[3]
local here = store .. '{' .. queue .. '}:'
local ended = {completed = true, dead = true, cancelled = true}
local places -- where a job id may be held, this queue first; built when first needed
local appended, ready, out = {}, false, {}
for i = 5, #ARGV, 9 do
  local name, tick, id, prio, opts = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 6], ARGV[i + 7]
  local last = redis.call('HGET', KEYS[4], name)
  if last and tonumber(last) >= tonumber(tick) then
    out[#out + 1] = 0
  else
    redis.call('HSET', KEYS[4], name, tick)
    if not places then
      places = {{queue, here}}
      if KEYS[5] then
        redis.call('SADD', KEYS[5], queue)
        for _, q in ipairs(redis.call('SMEMBERS', KEYS[5])) do
          if q ~= queue then places[#places + 1] = {q, store .. '{' .. q .. '}:'} end
        end
      end
    end
    local holder, old
    for _, place in ipairs(places) do
      old = redis.call('HGET', place[2] .. 'job:' .. id, STATE)
      if old then holder = place; break end
    end
    if old and not ended[old] then
      out[#out + 1] = 0
    else
      if old then
        redis.call('ZREM', holder[2] .. old, id)
        redis.call('DEL', holder[2] .. 'job:' .. id)
      end
      local ord = redis.call('INCR', KEYS[3])
      local fields = {TASK, ARGV[i + 4], DATA, ARGV[i + 5], STATE, 'waiting',
                      SEQ, ARGV[i + 3], ORD, ord}
      if made ~= '' then fields[#fields + 1] = MADE; fields[#fields + 1] = made end
      if prio ~= '0' then fields[#fields + 1] = PRIO; fields[#fields + 1] = prio end
      if opts ~= '' then fields[#fields + 1] = OPTS; fields[#fields + 1] = opts end
      if ARGV[i + 8] ~= '' then fields[#fields + 1] = RKEY; fields[#fields + 1] = ARGV[i + 8] end
      redis.call('HSET', here .. 'job:' .. id, unpack(fields))
      if prio ~= '0' then
        requeue(here, id, prio, ord)
        ready = true
      else
        appended[#appended + 1] = id
      end
      out[#out + 1] = 1
    end
  end
end
if #appended > 0 then
  redis.call('RPUSH', KEYS[1], unpack(appended))
  ready = true
end
if ready then signal(here, ARGV[4], false) end
return out
