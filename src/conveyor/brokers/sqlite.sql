-- The SQLite store's SQL, one named block per operation (procrastinate style).
-- sqlite_file.py loads this file once at import: a block runs from its
-- "-- name:" line to the next one. Comment lines are dropped when loading.
--
-- Every query of jobs selects * : the table's columns are in the order of
-- JobRecord's fields, so a row becomes JobRecord(*row) without any mapping
-- (sqlite_file.py checks the order when it opens a database).
--
-- Queries repeat the WHERE clause of the partial index they mean to use
-- (state = 'waiting', state IN (...)): SQLite only uses a partial index when
-- the query's own terms imply the index's condition.

-- name: schema
-- Tables and indexes, created under BEGIN IMMEDIATE when missing (schema version 2).
-- conveyor_meta holds conveyor's schema version. PRAGMA user_version is not
-- ours to use: in a database shared with an application (?shared=1) it is
-- often that application's migration marker.
CREATE TABLE IF NOT EXISTS conveyor_meta (
    key   TEXT PRIMARY KEY,
    value NOT NULL
);
CREATE TABLE IF NOT EXISTS conveyor_jobs (
    id            TEXT    NOT NULL UNIQUE,
    -- AUTOINCREMENT: a replaced job must get a seq larger than any seen so
    -- far, even when the job it replaces held the largest one.
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    task          TEXT    NOT NULL,
    queue         TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    priority      INTEGER NOT NULL DEFAULT 0,
    payload       TEXT    NOT NULL,
    options       TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    stalls        INTEGER NOT NULL DEFAULT 0,
    created_at    REAL    NOT NULL,
    run_at        REAL,
    started_at    REAL,
    finished_at   REAL,
    lease_token   TEXT,
    lease_expires REAL,
    worker        TEXT,
    result        TEXT,
    errors        TEXT    NOT NULL DEFAULT '[]',
    -- The job's rate_key argument as JSON text (its task's bucket), or NULL.
    rate_key      TEXT
);
CREATE INDEX IF NOT EXISTS conveyor_jobs_ready
    ON conveyor_jobs (queue, priority DESC, seq) WHERE state = 'waiting';
CREATE INDEX IF NOT EXISTS conveyor_jobs_delayed
    ON conveyor_jobs (run_at) WHERE state = 'delayed';
CREATE INDEX IF NOT EXISTS conveyor_jobs_leases
    ON conveyor_jobs (lease_expires) WHERE state = 'active';
CREATE INDEX IF NOT EXISTS conveyor_jobs_ended
    ON conveyor_jobs (queue, state, finished_at)
    WHERE state IN ('completed', 'dead', 'cancelled');
-- Flow control (sqlite_limits.py). The job starts of the last period of each
-- limited bucket: a queue's (kind 'queue', name = the queue, key '') or a
-- task's (kind 'task', name = the task, key = the rate_key, '' for none).
-- Only queues and tasks with a rate limit write here.
CREATE TABLE IF NOT EXISTS conveyor_starts (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    key  TEXT NOT NULL,
    at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS conveyor_starts_window ON conveyor_starts (kind, name, key, at);
-- The sweep of every worker's maintenance finds the old starts of keys not
-- seen again by this, instead of reading the whole table.
CREATE INDEX IF NOT EXISTS conveyor_starts_at ON conveyor_starts (at);
-- A task's bucket found full by a claim, and when its window opens again.
-- The claim sets the bucket's waiting jobs it met aside: their state is
-- 'held' (shown as 'waiting' to every reader), so they leave the ready index
-- and no later claim steps over them; when the bucket opens, a claim puts
-- back as many as its window has room for.
CREATE TABLE IF NOT EXISTS conveyor_buckets (
    task  TEXT NOT NULL,
    key   TEXT NOT NULL,
    opens REAL NOT NULL,
    PRIMARY KEY (task, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conveyor_buckets_opens ON conveyor_buckets (opens);
CREATE INDEX IF NOT EXISTS conveyor_jobs_held
    ON conveyor_jobs (task, rate_key, priority DESC, seq) WHERE state = 'held';

-- name: add_rate_key
-- Bring a version 1 conveyor_jobs up to version 2 (a new last column).
ALTER TABLE conveyor_jobs ADD COLUMN rate_key TEXT

-- name: unique_schema
-- Unique keys (options(unique_for=...)): one lock per queue and key, held by
-- job_id while that job has not ended (expires_at NULL), then until
-- expires_at = finished_at + unique_for; state and finished_at say how its job
-- ended, for when retention deleted it. Its own table, so a job without a key
-- costs nothing, and created IF NOT EXISTS at every open that may write: a
-- database made before it gets it then.
CREATE TABLE IF NOT EXISTS conveyor_unique (
    queue       TEXT NOT NULL,
    key         TEXT NOT NULL,
    job_id      TEXT NOT NULL,
    unique_for  REAL NOT NULL,
    created_at  REAL NOT NULL,
    state       TEXT,
    finished_at REAL,
    expires_at  REAL,
    PRIMARY KEY (queue, key)
);
CREATE INDEX IF NOT EXISTS conveyor_unique_job ON conveyor_unique (job_id);
CREATE INDEX IF NOT EXISTS conveyor_unique_expiry
    ON conveyor_unique (expires_at) WHERE expires_at IS NOT NULL;

-- name: named_objects
-- The tables and views a database holds (SQLite's own sqlite_* tables left
-- out), to tell an empty file, conveyor's database and someone else's apart.
SELECT name FROM sqlite_schema
WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\_%' ESCAPE '\'
ORDER BY name

-- name: jobs_columns
-- The columns of conveyor_jobs in table order (none when there is no such table).
SELECT name FROM pragma_table_info('conveyor_jobs') ORDER BY cid

-- name: schema_version
-- Conveyor's schema version, in a database that has conveyor_meta.
SELECT value FROM conveyor_meta WHERE key = 'schema_version'

-- name: set_schema_version
-- Record the schema version ?1: in a new database, in one made before
-- conveyor_meta existed (version 1, marked then by PRAGMA user_version, which
-- is left as it is), and in one just brought up from an older version.
INSERT INTO conveyor_meta (key, value) VALUES ('schema_version', ?1)
ON CONFLICT (key) DO UPDATE SET value = excluded.value

-- name: insert_job
-- Store one new job; a taken id inserts nothing (the caller deals with it).
-- ?1 id, ?2 task, ?3 queue, ?4 priority, ?5 payload, ?6 options, ?7 run_at, ?8 now,
-- ?9 rate_key
INSERT INTO conveyor_jobs
    (id, task, queue, state, priority, payload, options, run_at, created_at, rate_key)
VALUES (?1, ?2, ?3, CASE WHEN ?7 > ?8 THEN 'delayed' ELSE 'waiting' END, ?4, ?5, ?6, ?7, ?8, ?9)
ON CONFLICT (id) DO NOTHING

-- name: count_taken_ids
-- How many of the ids in the JSON array ?1 are already stored.
SELECT count(*) FROM conveyor_jobs WHERE id IN (SELECT value FROM json_each(?1))

-- name: last_seq
-- The largest seq stored: rows inserted afterwards all have a larger one.
SELECT coalesce(max(seq), 0) FROM conveyor_jobs

-- name: jobs_after_seq
-- The jobs a bulk insert just stored, in insertion order.
SELECT * FROM conveyor_jobs WHERE seq > ?1 ORDER BY seq

-- name: get_job
-- One job by id.
SELECT * FROM conveyor_jobs WHERE id = ?1

-- name: delete_job
-- Drop an ended job whose id a new job takes over.
DELETE FROM conveyor_jobs WHERE id = ?1

-- name: promote_due
-- Delayed jobs (of every queue) whose run_at has come become waiting.
UPDATE conveyor_jobs SET state = 'waiting' WHERE state = 'delayed' AND run_at <= ?1

-- name: claim_ready
-- Lease up to ?5 ready jobs of queue ?4 to worker ?3, each with its own
-- random token; none while the queue is paused (a row 'paused:<queue>' in
-- conveyor_meta). RETURNING gives the rows in no promised order.
-- ?1 now, ?2 lease expiry
UPDATE conveyor_jobs
SET state = 'active', attempts = attempts + 1, started_at = ?1,
    lease_token = lower(hex(randomblob(8))), lease_expires = ?2, worker = ?3
WHERE seq IN (
    SELECT seq FROM conveyor_jobs
    WHERE state = 'waiting' AND queue = ?4
      AND NOT EXISTS (SELECT 1 FROM conveyor_meta WHERE key = 'paused:' || ?4)
    ORDER BY priority DESC, seq
    LIMIT ?5
)
RETURNING *

-- name: extend_leases
-- Push back the expiry of the leases in ?2 (a JSON array of {job_id, token})
-- that still hold their job; returns the ids of the jobs still held.
UPDATE conveyor_jobs SET lease_expires = ?1
FROM (SELECT value ->> 'job_id' AS job_id, value ->> 'token' AS token FROM json_each(?2)) AS held
WHERE conveyor_jobs.id = held.job_id AND conveyor_jobs.lease_token = held.token
  AND conveyor_jobs.state = 'active'
RETURNING conveyor_jobs.id

-- name: complete_jobs
-- ?2 is a JSON array of [{job_id, token}, result JSON text]: every job still
-- held by its lease becomes completed with its result. Returns their ids,
-- each with whether it holds a unique key (an empty index probe for the
-- jobs that hold none: then end_unique is not run).
UPDATE conveyor_jobs
SET state = 'completed', result = done.result, finished_at = ?1,
    lease_token = NULL, lease_expires = NULL
FROM (
    SELECT value ->> '$[0].job_id' AS job_id, value ->> '$[0].token' AS token,
           value ->> '$[1]' AS result
    FROM json_each(?2)
) AS done
WHERE conveyor_jobs.id = done.job_id AND conveyor_jobs.lease_token = done.token
  AND conveyor_jobs.state = 'active'
RETURNING conveyor_jobs.id, EXISTS (SELECT 1 FROM conveyor_unique AS u
                                    WHERE u.job_id = conveyor_jobs.id AND u.expires_at IS NULL)

-- name: fail_job
-- A failed run, fenced by the lease (?1 id, ?2 token): append the error
-- (?3 type, ?4 message, ?5 traceback, ?6 now as JSON number text), then
-- retry at ?7 (delayed, or waiting when not in the future) or, when ?7 is
-- NULL, go dead. ?8 now.
UPDATE conveyor_jobs
SET errors = json_insert(errors, '$[#]', json_object(
        'attempt', attempts, 'type', ?3, 'message', ?4, 'traceback', ?5, 'at', json(?6))),
    state = CASE WHEN ?7 IS NULL THEN 'dead' WHEN ?7 > ?8 THEN 'delayed' ELSE 'waiting' END,
    run_at = coalesce(?7, run_at),
    finished_at = CASE WHEN ?7 IS NULL THEN ?8 END,
    lease_token = NULL, lease_expires = NULL
WHERE id = ?1 AND lease_token = ?2 AND state = 'active'

-- name: release_jobs
-- Held jobs (?1: JSON array of {job_id, token}) go back to waiting without
-- spending an attempt: shutdown interrupted them, they did not fail.
UPDATE conveyor_jobs
SET state = 'waiting', attempts = attempts - 1, lease_token = NULL, lease_expires = NULL
FROM (SELECT value ->> 'job_id' AS job_id, value ->> 'token' AS token FROM json_each(?1)) AS held
WHERE conveyor_jobs.id = held.job_id AND conveyor_jobs.lease_token = held.token
  AND conveyor_jobs.state = 'active'

-- name: recover_expired
-- Active jobs whose lease expired before ?1 (now) stalled: the count goes up;
-- above ?2 (max_stalled) the job goes dead with a "Stalled" error (?3 is now
-- as JSON number text), otherwise back to waiting, its attempt given back.
UPDATE conveyor_jobs
SET stalls = stalls + 1,
    state = CASE WHEN stalls + 1 > ?2 THEN 'dead' ELSE 'waiting' END,
    attempts = CASE WHEN stalls + 1 > ?2 THEN attempts ELSE attempts - 1 END,
    finished_at = CASE WHEN stalls + 1 > ?2 THEN ?1 END,
    errors = CASE WHEN stalls + 1 > ?2 THEN json_insert(errors, '$[#]', json_object(
        'attempt', attempts, 'type', 'Stalled',
        'message', 'lease expired ' || (stalls + 1) || ' times, more than max_stalled=' || ?2,
        'traceback', '', 'at', json(?3))) ELSE errors END,
    lease_token = NULL, lease_expires = NULL
WHERE state = 'active' AND lease_expires <= ?1
RETURNING id, seq, state

-- name: cancel_job
-- A waiting (or held) or delayed job (?1) ends as cancelled at ?2.
UPDATE conveyor_jobs SET state = 'cancelled', finished_at = ?2
WHERE id = ?1 AND state IN ('waiting', 'held', 'delayed')

-- name: retry_ids
-- Dead or cancelled jobs among the ids in ?1 (of queue ?2 when not NULL)
-- start over: same id and seq, fresh attempts, the error history kept.
UPDATE conveyor_jobs SET state = 'waiting', attempts = 0, stalls = 0, finished_at = NULL
WHERE id IN (SELECT value FROM json_each(?1)) AND state IN ('dead', 'cancelled')
  AND (?2 IS NULL OR queue = ?2)

-- name: retry_dead
-- Every dead job starts over.
UPDATE conveyor_jobs SET state = 'waiting', attempts = 0, stalls = 0, finished_at = NULL
WHERE state IN ('completed', 'dead', 'cancelled') AND state = 'dead'

-- name: retry_dead_in_queue
-- Every dead job of queue ?1 starts over.
UPDATE conveyor_jobs SET state = 'waiting', attempts = 0, stalls = 0, finished_at = NULL
WHERE state IN ('completed', 'dead', 'cancelled') AND queue = ?1 AND state = 'dead'

-- name: promote_ids
-- Delayed jobs among the ids in ?1 (of queue ?2 when not NULL) become waiting.
UPDATE conveyor_jobs SET state = 'waiting'
WHERE id IN (SELECT value FROM json_each(?1)) AND state = 'delayed'
  AND (?2 IS NULL OR queue = ?2)

-- name: promote_all
-- Every delayed job (of queue ?1 when not NULL) becomes waiting.
UPDATE conveyor_jobs SET state = 'waiting'
WHERE state = 'delayed' AND (?1 IS NULL OR queue = ?1)

-- name: trim_older
-- Delete ended jobs of queue ?1 in state ?2 that finished before ?3.
DELETE FROM conveyor_jobs
WHERE state IN ('completed', 'dead', 'cancelled') AND queue = ?1 AND state = ?2
  AND finished_at < ?3

-- name: trim_keep
-- Delete ended jobs of queue ?1 in state ?2 but the ?3 most recently finished.
-- The finished_at range makes SQLite look up state by equality (not by the
-- IN list), so the index yields the ORDER BY and nothing gets sorted.
DELETE FROM conveyor_jobs WHERE seq IN (
    SELECT seq FROM conveyor_jobs
    WHERE state IN ('completed', 'dead', 'cancelled') AND queue = ?1 AND state = ?2
      AND finished_at IS NOT NULL
    ORDER BY finished_at DESC, seq DESC
    LIMIT -1 OFFSET ?3
)

-- name: list_jobs
-- A page of jobs in seq order after cursor ?3, filtered by queue ?1 and
-- state ?2 when they are not NULL (a held job is a waiting one).
SELECT * FROM conveyor_jobs
WHERE seq > ?3 AND (?1 IS NULL OR queue = ?1)
  AND (?2 IS NULL OR state = ?2 OR (?2 = 'waiting' AND state = 'held'))
ORDER BY seq
LIMIT ?4

-- name: counts
-- (queue, state, n) for every pair that holds jobs (held jobs count as
-- waiting: a queue may come twice with 'waiting'). One part per partial
-- index, so most of the work is index-only instead of reading every row.
SELECT queue, 'waiting', count(*) FROM conveyor_jobs WHERE state = 'waiting' GROUP BY queue
UNION ALL
SELECT queue, 'delayed', count(*) FROM conveyor_jobs WHERE state = 'delayed' GROUP BY queue
UNION ALL
SELECT queue, 'active', count(*) FROM conveyor_jobs WHERE state = 'active' GROUP BY queue
UNION ALL
SELECT queue, 'waiting', count(*) FROM conveyor_jobs WHERE state = 'held' GROUP BY queue
UNION ALL
SELECT queue, state, count(*) FROM conveyor_jobs
WHERE state IN ('completed', 'dead', 'cancelled') GROUP BY queue, state

-- name: pending
-- Jobs of the queues in ?1 (JSON array) that are active, or (in queues not
-- paused) waiting (held ones too) or delayed and due by ?2.
SELECT
    (SELECT count(*) FROM conveyor_jobs
     WHERE state = 'waiting' AND queue IN (SELECT j.value FROM json_each(?1) AS j
                     WHERE NOT EXISTS (SELECT 1 FROM conveyor_meta AS m WHERE m.key = 'paused:' || j.value)))
  + (SELECT count(*) FROM conveyor_jobs
     WHERE state = 'held' AND queue IN (SELECT j.value FROM json_each(?1) AS j
                     WHERE NOT EXISTS (SELECT 1 FROM conveyor_meta AS m WHERE m.key = 'paused:' || j.value)))
  + (SELECT count(*) FROM conveyor_jobs
     WHERE state = 'active' AND queue IN (SELECT value FROM json_each(?1)))
  + (SELECT count(*) FROM conveyor_jobs
     WHERE state = 'delayed' AND run_at <= ?2 AND queue IN (SELECT j.value FROM json_each(?1) AS j
                     WHERE NOT EXISTS (SELECT 1 FROM conveyor_meta AS m WHERE m.key = 'paused:' || j.value)))

-- name: next_due
-- The earliest run_at among delayed jobs of the queues in ?1 (JSON array)
-- not paused.
SELECT run_at FROM conveyor_jobs
WHERE state = 'delayed' AND queue IN (SELECT j.value FROM json_each(?1) AS j
                     WHERE NOT EXISTS (SELECT 1 FROM conveyor_meta AS m WHERE m.key = 'paused:' || j.value))
ORDER BY run_at
LIMIT 1

-- name: work_hint
-- For wait_for_work, one cheap read: is a job of the queues in ?1 (those not
-- paused) waiting, and when is the earliest delayed one due?
SELECT
    EXISTS (SELECT 1 FROM conveyor_jobs
            WHERE state = 'waiting' AND queue IN (SELECT j.value FROM json_each(?1) AS j
                     WHERE NOT EXISTS (SELECT 1 FROM conveyor_meta AS m WHERE m.key = 'paused:' || j.value))),
    (SELECT run_at FROM conveyor_jobs
     WHERE state = 'delayed' AND queue IN (SELECT j.value FROM json_each(?1) AS j
                     WHERE NOT EXISTS (SELECT 1 FROM conveyor_meta AS m WHERE m.key = 'paused:' || j.value))
     ORDER BY run_at LIMIT 1)

-- name: pause
-- Mark queue ?1 paused; a queue paused already is left as it is.
INSERT INTO conveyor_meta (key, value) VALUES ('paused:' || ?1, 1)
ON CONFLICT (key) DO NOTHING

-- name: resume
-- Take queue ?1's paused mark away.
DELETE FROM conveyor_meta WHERE key = 'paused:' || ?1

-- name: paused_queues
-- The queues paused now.
SELECT substr(key, 8) FROM conveyor_meta WHERE key LIKE 'paused:%'

-- name: purge
-- Delete queue ?1's jobs in the states of the JSON array ?2 (never 'active':
-- sqlite.py checks).
DELETE FROM conveyor_jobs
WHERE queue = ?1 AND state IN (SELECT value FROM json_each(?2)) AND state != 'active'

-- name: claim_tick
-- Record ?3 as the last tick of schedule ?2 of queue ?1 (a row
-- 'schedule:<queue>/<name>' in conveyor_meta: a queue name holds no '/'),
-- only when none is recorded or the one recorded is earlier: one row
-- changed means the tick is this caller's to enqueue.
INSERT INTO conveyor_meta (key, value) VALUES ('schedule:' || ?1 || '/' || ?2, ?3)
ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE value < excluded.value

-- name: last_tick
-- The last tick recorded for schedule ?2 of queue ?1, if any.
SELECT value FROM conveyor_meta WHERE key = 'schedule:' || ?1 || '/' || ?2

-- name: unique_holder
-- The lock of key ?2 in queue ?1 and, while its job is stored, that job's
-- state and finished_at (sqlite.py decides whether the key is held).
SELECT l.job_id, l.unique_for, l.created_at, l.state, l.finished_at, l.expires_at,
       j.state, j.finished_at
FROM conveyor_unique AS l LEFT JOIN conveyor_jobs AS j ON j.id = l.job_id
WHERE l.queue = ?1 AND l.key = ?2

-- name: take_unique
-- Job ?3, just stored, takes key ?2 of queue ?1 (from a holder whose hold ran
-- out, if any) for ?4 seconds after it ends; ?5 now.
INSERT INTO conveyor_unique (queue, key, job_id, unique_for, created_at)
VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (queue, key) DO UPDATE
SET job_id = excluded.job_id, unique_for = excluded.unique_for,
    created_at = excluded.created_at, state = NULL, finished_at = NULL, expires_at = NULL

-- name: drop_expired_unique
-- Up to 100 locks whose hold ran out by ?1 go: run whenever a key is taken
-- (and by trim, without the limit), so the table cannot keep growing.
DELETE FROM conveyor_unique WHERE rowid IN (
    SELECT rowid FROM conveyor_unique
    WHERE expires_at IS NOT NULL AND expires_at <= ?1
    LIMIT ?2
)

-- name: end_unique
-- The jobs in the JSON array ?1 ended as ?2 at ?3: the keys they hold are
-- held unique_for seconds more, then free.
UPDATE conveyor_unique SET state = ?2, finished_at = ?3, expires_at = ?3 + unique_for
WHERE job_id IN (SELECT value FROM json_each(?1)) AND expires_at IS NULL

-- name: rehold_unique
-- The jobs in the JSON array ?1 were retried: a key still held for one of
-- them at ?2 (its hold not run out) is its again until it ends.
UPDATE conveyor_unique SET state = NULL, finished_at = NULL, expires_at = NULL
WHERE job_id IN (SELECT value FROM json_each(?1))
  AND expires_at IS NOT NULL AND expires_at > ?2

-- name: purge_unique
-- Before purge deletes queue ?1's jobs in the states of the JSON array ?2:
-- the keys held by those that have not ended (waiting, delayed) are free.
DELETE FROM conveyor_unique WHERE expires_at IS NULL AND job_id IN (
    SELECT id FROM conveyor_jobs
    WHERE queue = ?1 AND state IN (SELECT value FROM json_each(?2))
      AND state IN ('waiting', 'held', 'delayed')  -- held: waiting, set aside by a limit
)

-- Flow control (sqlite_limits.py): only queues and tasks the controls limit
-- run these; every other claim is claim_ready alone.

-- name: window_prune
-- Forget the starts of bucket (?1 kind, ?2 name, ?3 key) that left its window:
-- those at or before ?4 (now - period).
DELETE FROM conveyor_starts WHERE kind = ?1 AND name = ?2 AND key = ?3 AND at <= ?4

-- name: window_count
-- The starts in the window of bucket (?1, ?2, ?3): those after ?4 (now - period).
SELECT count(*) FROM conveyor_starts WHERE kind = ?1 AND name = ?2 AND key = ?3 AND at > ?4

-- name: window_nth
-- The ?5-th oldest start (from 0) in the window of bucket (?1, ?2, ?3) after ?4.
SELECT at FROM conveyor_starts WHERE kind = ?1 AND name = ?2 AND key = ?3 AND at > ?4
ORDER BY at LIMIT 1 OFFSET ?5

-- name: window_start
-- One job start at ?4 in bucket (?1, ?2, ?3).
INSERT INTO conveyor_starts (kind, name, key, at) VALUES (?1, ?2, ?3, ?4)

-- name: running
-- How many jobs of queue ?1 are active with a lease unexpired at ?2, and the
-- earliest end of those leases.
SELECT count(*), min(lease_expires) FROM conveyor_jobs
WHERE state = 'active' AND lease_expires > ?2 AND queue = ?1

-- name: queue_state
-- Is queue ?1 paused; does it hold a waiting job (not held)?
SELECT EXISTS (SELECT 1 FROM conveyor_meta WHERE key = 'paused:' || ?1),
       EXISTS (SELECT 1 FROM conveyor_jobs WHERE state = 'waiting' AND queue = ?1)

-- name: ready_keyed
-- Up to ?2 ready jobs of queue ?1 in claim order: seq, task, rate_key or ''.
SELECT seq, task, coalesce(rate_key, '') FROM conveyor_jobs
WHERE state = 'waiting' AND queue = ?1
ORDER BY priority DESC, seq
LIMIT ?2

-- name: hold_bucket
-- Task ?1's bucket ?2 is full until ?3.
INSERT INTO conveyor_buckets (task, key, opens) VALUES (?1, ?2, ?3)
ON CONFLICT (task, key) DO UPDATE SET opens = excluded.opens

-- name: hold_jobs
-- Set aside the waiting jobs whose seqs are in the JSON array ?1 (their
-- bucket is full): out of the ready index until it opens.
UPDATE conveyor_jobs SET state = 'held'
WHERE seq IN (SELECT value FROM json_each(?1)) AND state = 'waiting'

-- name: opened_buckets
-- The held buckets whose window has opened by ?1.
SELECT task, key FROM conveyor_buckets WHERE opens <= ?1

-- name: unhold_bucket
-- Put back in line the first ?3 held jobs of task ?1 with rate_key ?2 (NULL:
-- the shared bucket), in claim order.
UPDATE conveyor_jobs SET state = 'waiting'
WHERE seq IN (SELECT seq FROM conveyor_jobs
              WHERE state = 'held' AND task = ?1 AND rate_key IS ?2
              ORDER BY priority DESC, seq LIMIT ?3)

-- name: bucket_holds
-- Does task ?1's bucket ?2 (rate_key, NULL: shared) still hold jobs?
SELECT EXISTS (SELECT 1 FROM conveyor_jobs WHERE state = 'held' AND task = ?1 AND rate_key IS ?2)

-- name: drop_bucket
-- Task ?1's bucket ?2 holds nothing any more.
DELETE FROM conveyor_buckets WHERE task = ?1 AND key = ?2

-- name: claim_seqs
-- Lease the waiting jobs whose seqs are in the JSON array ?4 to worker ?3
-- (?1 now, ?2 lease expiry), as claim_ready does.
UPDATE conveyor_jobs
SET state = 'active', attempts = attempts + 1, started_at = ?1,
    lease_token = lower(hex(randomblob(8))), lease_expires = ?2, worker = ?3
WHERE seq IN (SELECT value FROM json_each(?4)) AND state = 'waiting'
RETURNING *

-- name: next_bucket_opening
-- The earliest time a held bucket of a task in the JSON array ?1 opens
-- (perhaps already: the next claim puts its jobs back).
SELECT min(opens) FROM conveyor_buckets WHERE task IN (SELECT value FROM json_each(?1))

-- name: any_opened
-- Has a held bucket of a task in the JSON array ?2 opened by ?1?
SELECT EXISTS (SELECT 1 FROM conveyor_buckets
               WHERE opens <= ?1 AND task IN (SELECT value FROM json_each(?2)))

-- name: sweep_starts
-- Starts older than every window (before ?1 = now - the longest period).
DELETE FROM conveyor_starts WHERE at <= ?1

-- name: sweep_held
-- Held jobs of tasks no longer limited (not in the JSON array ?1) go back in line.
UPDATE conveyor_jobs SET state = 'waiting'
WHERE state = 'held' AND task NOT IN (SELECT value FROM json_each(?1))

-- name: sweep_buckets
-- The buckets of tasks no longer limited (not in the JSON array ?1) go.
DELETE FROM conveyor_buckets WHERE task NOT IN (SELECT value FROM json_each(?1))
