-- enqueue: store new jobs of one queue, in order, each id at most once.
-- A job whose id the caller chose is looked up first: one that has not ended
-- is returned instead of storing a new one; an ended one is replaced. With
-- KEYS[5] (one server or Sentinel) the id is looked up in every queue;
-- without it (Cluster, where the other queues live in other slots) only in
-- this one. Generated ids (96 random bits) are not looked up: a job that
-- already has one is this very job, sent again after a lost connection.
-- KEYS[1] waiting  LIST   KEYS[2] prioritized  ZSET   (see _shared)
-- KEYS[3] delayed  ZSET  score run_at, member id
-- KEYS[4] counter  STRING  the queue's FIFO counter: one ord per job, never reused
-- KEYS[5] (optional) queues  SET of every queue name: this queue is added to it
-- ARGV[1] store prefix ('P:'; a queue's keys start with 'P:{queue}:', a job is
--         the HASH 'P:{queue}:job:' .. id)   ARGV[2] queue
-- ARGV[3] created_at in whole microseconds (an integer: half the bytes of the
--         float); '' = each job's seq is its created_at (not stored twice)
-- ARGV[4] channel to PUBLISH on when work appears ('' = none)
-- ARGV[5] the jobs as one JSON array (one argument, not ten a job: cheaper to
--         send) of 10 strings per job: id, seq, task, payload, priority,
--         options ('' = none), run_at ('' = none), state ('waiting' or
--         'delayed'), '1' when the caller chose the id ('' = generated),
--         rate_key ('' = none; else JSON text, never empty).
--         A single job comes as those 10 strings in ARGV[5..14] instead (no
--         JSON to encode and decode).
-- Then, only when some of the jobs carry a unique key (_shared: unique keys):
-- ARGV[6] (ARGV[15] after a single job) now, and ARGV[7] (ARGV[16]) a JSON
-- array of [job number (1-based), key, unique_for]. A job whose key is held
-- in this queue is not stored: the holder is returned. One stored takes it.
-- Returns one item per job: 1 when stored, else {queue, HGETALL} of the job
-- holding the id, {queue, HGETALL, id} of the job `id` holding the key, or
-- {queue, HGETALL of the key's lock, id, 'lock'} when that job was deleted
-- already (retention).
local store, queue, made = ARGV[1], ARGV[2], ARGV[3]
local here = store .. '{' .. queue .. '}:'
if KEYS[5] then redis.call('SADD', KEYS[5], queue) end
local places -- where a chosen id may be held, this queue first; built when first needed
local ended = {completed = true, dead = true, cancelled = true}
local single = #ARGV >= 14
local rows = single and {unpack(ARGV, 5, 14)} or cjson.decode(ARGV[5])
local n = #rows / 10
local now, uniques -- job number -> {number, key, unique_for}; nil when no job has a key
local u = single and 15 or 6
if ARGV[u] then
  now, uniques = tonumber(ARGV[u]), {}
  for _, spec in ipairs(cjson.decode(ARGV[u + 1])) do uniques[spec[1]] = spec end
end

-- The reply for a job whose key is held in this queue, or nil when it is free.
local function unique_holder(ukey)
  local lock = unique_lock(here, ukey)
  local held = redis.call('HMGET', lock, 'j', 'f', 'x')
  if not held[1] then return nil end
  local job = here .. 'job:' .. held[1]
  local expires = tonumber(held[3])
  if not expires then
    local state = redis.call('HMGET', job, STATE, END)
    if not state[1] then return nil end -- deleted before it ended (purge): free
    if not ended[state[1]] then return {queue, redis.call('HGETALL', job), held[1]} end
    expires = tonumber(state[2]) + tonumber(held[2]) -- ended, the lock not told
  end
  if expires <= now then return nil end
  local fields = redis.call('HGETALL', job)
  if #fields > 0 then return {queue, fields, held[1]} end
  return {queue, redis.call('HGETALL', lock), held[1], 'lock'}
end
local ord = redis.call('INCRBY', KEYS[4], n) - n
local head -- run_at of the first delayed job, read when first needed
local appended, ready, sooner = {}, false, false
local out = {}
for i = 1, #rows, 10 do
  local id, prio, opts, run_at, state = rows[i], rows[i + 4], rows[i + 5], rows[i + 6], rows[i + 7]
  local holder, old
  local spec = uniques and uniques[(i + 9) / 10]
  local held = spec and unique_holder(spec[2])
  if held and held[3] == id and rows[i + 8] ~= '1' then
    held = nil -- a generated id holds it: this job, sent again (see below)
  end
  if held then
    -- the key is held: the chosen-id look-up below changes nothing
  elseif rows[i + 8] == '1' then
    if not places then
      places = {{queue, here}}
      if KEYS[5] then
        for _, q in ipairs(redis.call('SMEMBERS', KEYS[5])) do
          if q ~= queue then places[#places + 1] = {q, store .. '{' .. q .. '}:'} end
        end
      end
    end
    for _, place in ipairs(places) do
      old = redis.call('HGET', place[2] .. 'job:' .. id, STATE)
      if old then holder = place; break end
    end
  end
  if held then
    out[#out + 1] = held
  elseif old and not ended[old] then
    out[#out + 1] = {holder[1], redis.call('HGETALL', holder[2] .. 'job:' .. id)}
  elseif rows[i + 8] ~= '1' and redis.call('EXISTS', here .. 'job:' .. id) == 1 then
    out[#out + 1] = 1 -- stored by the first sending of this call
  else
    if old then
      redis.call('ZREM', holder[2] .. old, id)
      redis.call('DEL', holder[2] .. 'job:' .. id)
    end
    ord = ord + 1
    local fields = {TASK, rows[i + 2], DATA, rows[i + 3], STATE, state,
                    SEQ, rows[i + 1], ORD, ord}
    if made ~= '' then fields[#fields + 1] = MADE; fields[#fields + 1] = made end
    if prio ~= '0' then fields[#fields + 1] = PRIO; fields[#fields + 1] = prio end
    if opts ~= '' then fields[#fields + 1] = OPTS; fields[#fields + 1] = opts end
    if run_at ~= '' then fields[#fields + 1] = RUN; fields[#fields + 1] = run_at end
    if spec then fields[#fields + 1] = UNIQUE; fields[#fields + 1] = spec[2] end
    if rows[i + 9] ~= '' then fields[#fields + 1] = RKEY; fields[#fields + 1] = rows[i + 9] end
    redis.call('HSET', here .. 'job:' .. id, unpack(fields))
    if spec then -- it takes the key (from a holder whose hold ran out)
      local lock = unique_lock(here, spec[2])
      redis.call('DEL', lock)
      redis.call('HSET', lock, 'j', id, 'f', string.format('%.17g', spec[3]), 'c', ARGV[u])
    end
    if state == 'delayed' then
      if head == nil then head = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')[2] or false end
      redis.call('ZADD', KEYS[3], run_at, id)
      if not head or tonumber(run_at) < tonumber(head) then
        head, sooner = run_at, true -- a sooner due time: sleepers should look again
      end
    elseif prio ~= '0' then
      requeue(here, id, prio, ord)
      ready = true
    else
      appended[#appended + 1] = id
    end
    out[#out + 1] = 1
  end
end
if #appended > 0 then
  redis.call('RPUSH', KEYS[1], unpack(appended))
  ready = true
end
if ready or sooner then signal(here, ARGV[4], sooner) end
return out
