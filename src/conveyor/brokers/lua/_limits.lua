-- _limits: the keys of held-back work, for the scripts that read or move it
-- (prepended after _shared to claim_limited, cancel and purge only: the
-- other scripts, and claims of queues without controls, never see them).
--
-- A job whose task has a rate limit (redis_scripts: claim's task_rates) and
-- whose bucket has no slot when a claim meets it in the ready line is moved,
-- once, out of that line into its bucket's own line:
--   'rl-ready:' .. bucket  ZSET like 'prioritized' (score -priority, member
--                          ord in 12 hex digits then id): the bucket's held jobs
--   'rl-log:' .. bucket    ZSET of the bucket's starts in its window (score
--                          the start time); it expires when idle
--   buckets                ZSET of the buckets holding jobs, scored by when
--                          each next has a slot (claim serves those due)
--   held                   STRING: how many jobs the bucket lines hold (counts)
-- The bucket of a job: '<length of task>:<task>' then its rate_key's JSON
-- text (none: the task's shared bucket; JSON text is never empty), so two
-- (task, key) pairs never make the same bucket whatever their characters.

local function bucket_of(task, rate_key)
  return #task .. ':' .. task .. (rate_key or '')
end

-- A bucket left without held jobs leaves the buckets ZSET.
local function unhold(prefix, bucket, count)
  redis.call('DECRBY', prefix .. 'held', count)
  if redis.call('EXISTS', prefix .. 'rl-ready:' .. bucket) == 0 then
    redis.call('ZREM', prefix .. 'buckets', bucket)
  end
end
