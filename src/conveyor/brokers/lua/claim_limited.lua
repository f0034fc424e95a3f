-- claim_limited: claim.lua for a queue under controls (redis_scripts.claim
-- sends it instead of claim.lua only then, and for a sweep: ARGV[8]). Besides
-- what claim.lua does, it holds jobs back, atomically with the claim:
-- - a concurrency cap: at most cap minus the queue's jobs active with an
--   unexpired lease (a dead worker's share comes back when its lease ends);
-- - a queue rate: at most `limit` starts in any window of `period` seconds,
--   counted in a log of start times (a start at t leaves it at t + period);
-- - task rates per bucket (_limits): a job of a limited task whose bucket has
--   no slot is moved, once, out of the ready line into its bucket's line, so
--   no later claim looks at it again until its bucket has a slot. Due buckets
--   are served merged with the ready line in claim order.
-- Held-back jobs stay waiting, spend nothing, hold up nothing else. When the
-- queue's own limits hold its work back, the marker goes (idle workers sleep
-- until next_due rather than wake for nothing); when the cap is full, the
-- 'capped' key is set, and a completion, failure or release then wakes a waiter.
-- Times are the server's clock on the wall clock (ARGV[8] 'w'), else the
-- claimer's (a test's fake clock).
-- KEYS[1] waiting  LIST   KEYS[2] prioritized  ZSET   (see _shared)
-- KEYS[3] delayed  ZSET  score run_at   KEYS[4] active  ZSET  score lease expiry
-- KEYS[5] starts   ZSET  the queue's starts in its window, score start time
-- KEYS[6] buckets  ZSET  buckets holding jobs, score when each next has a slot
-- KEYS[7] held     STRING  jobs in bucket lines   KEYS[8] capped  STRING
-- KEYS[9] (optional) stamp: as claim.lua's KEYS[5]
-- ARGV[1..7] as claim.lua: prefix, now, lease expiry, worker, token, limit, channel
-- ARGV[8] flags: 's' sweep first: the jobs held in the bucket lines of a task
--         not in ARGV[12..] (its limit went) go back to the ready line, in their
--         place (the first claim of a queue under each new set of controls);
--         'w' the claimer's clock is the wall clock: take the server's instead
--         (one clock for every worker's starts, read when the claim runs)
-- ARGV[9] the queue's rate: limit ('' = none)   ARGV[10] its period in seconds
-- ARGV[11] the queue's concurrency cap ('' = none)
-- ARGV[12..] task rates, triples: task, limit, period
-- Returns pairs, in claim order: id, the job's HGETALL.
local prefix, now, expiry, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[6])
now, expiry = claim_times(KEYS[9], now, expiry)
if not now or promote_due_then_paused(prefix, KEYS[3], now) then return {} end

if string.find(ARGV[8], 'w', 1, true) and not KEYS[9] then
  local clock = redis.call('TIME')
  clock = clock[1] + clock[2] / 1e6
  expiry = string.format('%.6f', tonumber(expiry) - tonumber(now) + clock)
  now = string.format('%.6f', clock)
end
local t = tonumber(now)
local MOVES = 2000 -- most jobs one claim moves to bucket lines: a long script blocks everyone
local function num(x) return string.format('%.17g', x) end -- redis.call would round to 14 digits
local function ttl(period) return math.ceil((period + 60) * 1000) end -- an idle log goes
local function zadd_all(key, flat) -- score, member... in calls of a bounded size
  for i = 1, #flat, 2000 do
    redis.call('ZADD', key, unpack(flat, i, math.min(i + 1999, #flat)))
  end
end

local rates = {}
local limited = #ARGV >= 12
for i = 12, #ARGV, 3 do rates[ARGV[i]] = {tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])} end
local function task_of(bucket)
  local n, rest = string.match(bucket, '^(%d+):(.*)$')
  return string.sub(rest, 1, tonumber(n))
end
if string.find(ARGV[8], 's', 1, true) then
  local back = 0
  for _, bucket in ipairs(redis.call('ZRANGE', KEYS[6], 0, -1)) do
    if not rates[task_of(bucket)] then
      local line = prefix .. 'rl-ready:' .. bucket
      back = back + redis.call('ZCARD', line)
      redis.call('ZUNIONSTORE', KEYS[2], 2, KEYS[2], line) -- same members, same scores
      redis.call('DEL', line)
      redis.call('ZREM', KEYS[6], bucket)
    end
  end
  if back > 0 then redis.call('DECRBY', KEYS[7], back) end
end

-- 1. The queue's room: its cap and its window.
local qroom = math.huge -- starts the queue's own limits allow now
local cap, busy = tonumber(ARGV[11]), 0
if cap then
  busy = redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf')
  qroom = cap - busy
end
local qlimit, qperiod = tonumber(ARGV[9]), tonumber(ARGV[10])
if qlimit then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', num(t - qperiod))
  qroom = math.min(qroom, qlimit - redis.call('ZCARD', KEYS[5]))
end
local room = math.min(limit, qroom)

-- 2. Task rates: a bucket's free slots, read once per claim and counted down.
local free, starts, touched = {}, {}, {} -- per bucket: slots left, starts to log, to rescore
local function slots(bucket, rate)
  if free[bucket] == nil then
    if rate then
      local log = prefix .. 'rl-log:' .. bucket
      redis.call('ZREMRANGEBYSCORE', log, '-inf', num(t - rate[2]))
      free[bucket] = rate[1] - redis.call('ZCARD', log)
    else -- its task has no limit any more: its held jobs go as they come
      free[bucket] = math.huge
    end
  end
  return free[bucket]
end
local ids, moved, unheld = {}, 0, 0
local tag = string.sub(ARGV[5], 1, 16) -- this claim's token: with an id, a unique log entry
local function take(id, bucket, rate)
  ids[#ids + 1] = id
  if rate then
    free[bucket] = free[bucket] - 1
    local log = starts[bucket] or {}
    starts[bucket] = log
    log[#log + 1] = now
    log[#log + 1] = tag .. id
  end
end

-- Claim order: score (-priority), then member (ord first, fixed width).
local function in_order(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end
-- The jobs of the due buckets that their slots allow, at most `room` buckets.
local held = {}
if room > 0 then
  for _, bucket in ipairs(redis.call('ZRANGE', KEYS[6], '-inf', now, 'BYSCORE', 'LIMIT', 0, room)) do
    touched[bucket] = true
    local rate = rates[task_of(bucket)]
    local n = math.min(slots(bucket, rate), room)
    if n > 0 then
      local members = redis.call('ZRANGE', prefix .. 'rl-ready:' .. bucket, 0, n - 1, 'WITHSCORES')
      for i = 1, #members, 2 do
        held[#held + 1] = {tonumber(members[i + 1]), members[i], bucket, rate}
      end
    end
  end
  table.sort(held, in_order)
end
-- The ready line, read ahead: the head of 'prioritized' (nil: not read yet,
-- false: empty), and the list in slices; the ids taken off the list are cut
-- from it once, after the loop.
local zhead, slice, at, listed, list_done = nil, {}, 1, 0, false
local function list_next()
  if at > #slice and not list_done then
    slice, at = redis.call('LRANGE', KEYS[1], listed, listed + 99), 1
    list_done = #slice == 0
  end
  return slice[at]
end
local function member_of(entry) -- a list job's member, made when first needed
  if not entry[2] then
    entry[2] = ready_member(redis.call('HGET', prefix .. 'job:' .. entry[3], ORD), entry[3])
  end
  return entry[2]
end
-- The next job of the ready line in claim order: {score, member, id, in the list}.
local function line_head()
  if zhead == nil then
    local z = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    zhead = z[1] and {tonumber(z[2]), z[1], string.sub(z[1], 13), false} or false
  end
  if zhead and zhead[1] < 0 then return zhead end
  local id = list_next()
  if id then
    local entry = {0, false, id, true}
    if not (zhead and zhead[1] == 0) or member_of(entry) < zhead[2] then return entry end
  end
  return zhead or nil
end
local function before(c, entry) -- a held job before the line's next one?
  if c[1] ~= entry[1] then return c[1] < entry[1] end
  return c[2] < member_of(entry)
end

-- 3. Take, in claim order, from the due buckets and the ready line.
local h, head = 1, nil
while #ids < room do
  head = head or line_head()
  local c = held[h]
  if c and (not head or before(c, head)) then
    h = h + 1
    redis.call('ZREM', prefix .. 'rl-ready:' .. c[3], c[2])
    unheld = unheld + 1
    take(string.sub(c[2], 13), c[3], c[4])
  elseif head then
    if head[4] then
      at, listed = at + 1, listed + 1
    else
      redis.call('ZREM', KEYS[2], head[2])
      zhead = nil
    end
    local id, rate, bucket = head[3], nil, nil
    if limited then
      local job = redis.call('HMGET', prefix .. 'job:' .. id, TASK, RKEY)
      rate = rates[job[1]]
      if rate then bucket = bucket_of(job[1], job[2] or nil) end
    end
    if not bucket then
      take(id)
    elseif redis.call('EXISTS', prefix .. 'rl-ready:' .. bucket) == 0 and slots(bucket, rate) > 0 then
      take(id, bucket, rate)
    else -- behind its bucket's held jobs, or no slot: into the bucket's line
      redis.call('ZADD', prefix .. 'rl-ready:' .. bucket, num(head[1]), member_of(head))
      touched[bucket] = true
      moved = moved + 1
    end
    head = nil
    if moved >= MOVES then break end
  else
    break
  end
end
if listed > 0 then redis.call('LTRIM', KEYS[1], listed, -1) end

-- 4. Log the starts, and put each bucket touched where it next has a slot.
if qlimit and #ids > 0 then
  local log = {}
  for _, id in ipairs(ids) do log[#log + 1] = now; log[#log + 1] = tag .. id end
  zadd_all(KEYS[5], log)
  redis.call('PEXPIRE', KEYS[5], ttl(qperiod))
end
for bucket, log in pairs(starts) do
  local key = prefix .. 'rl-log:' .. bucket
  zadd_all(key, log)
  redis.call('PEXPIRE', key, ttl(rates[task_of(bucket)][2]))
end
for bucket in pairs(touched) do
  if redis.call('EXISTS', prefix .. 'rl-ready:' .. bucket) == 0 then
    redis.call('ZREM', KEYS[6], bucket)
  else
    local rate, at = rates[task_of(bucket)], t
    if rate and slots(bucket, rate) <= 0 then -- when the start that fills its window leaves it
      local log = prefix .. 'rl-log:' .. bucket
      local over = redis.call('ZCARD', log) - rate[1]
      local oldest = redis.call('ZRANGE', log, over, over, 'WITHSCORES')[2]
      if oldest then at = tonumber(oldest) + rate[2] end
    end
    redis.call('ZADD', KEYS[6], num(at), bucket)
  end
end
if moved ~= unheld then redis.call('INCRBY', KEYS[7], moved - unheld) end

local out = lease(prefix, ids, KEYS[4], now, expiry, ARGV[5], ARGV[4])

-- 5. The marker: set only while work is claimable now.
local left = ready_count(prefix) > 0
    or #redis.call('ZRANGE', KEYS[6], '-inf', now, 'BYSCORE', 'LIMIT', 0, 1) > 0
if cap and busy + #ids >= cap and (left or redis.call('EXISTS', KEYS[6]) == 1) then
  redis.call('SET', KEYS[8], '1') -- full with work behind: the next end of a job wakes a waiter
end
if left and #ids < qroom then -- else the queue's own limits hold its work back
  signal(prefix, ARGV[7], false)
else
  redis.call('DEL', prefix .. 'marker')
end
return out
