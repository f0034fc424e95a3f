// Redis memory per waiting BullMQ job, the BullMQ half of benchmarks/redis_memory.py.
//
//   npm install --prefix benchmarks/bullmq_memory
//   node benchmarks/bullmq_memory/memory.mjs --port PORT [--jobs 100000] [--batch 1000]
//        [--drain] [--keep-completed N] [--concurrency 50]
//
// Against a fresh private redis-server (redis_memory.py starts one): adds --jobs
// jobs named "send-email" with data {to: "user@example.com", n: 1} through
// queue.addBulk in batches of --batch, and reports the used_memory delta per
// job. With --drain, a Worker with a noop processor then completes them all
// (BullMQ's default keeps every completed job; --keep-completed N passes
// removeOnComplete: {count: N} to the Worker) and used_memory is read again.
// Prints one JSON object on stdout.

import { createRequire } from "node:module";
import { Queue, Worker } from "bullmq";
import Redis from "ioredis";

const require = createRequire(import.meta.url);

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) return fallback;
  const value = process.argv[i + 1];
  return value === undefined || value.startsWith("--") ? true : value;
}

const port = Number(option("port", 6379));
const jobs = Number(option("jobs", 100000));
const batch = Number(option("batch", 1000));
const drain = option("drain", false) !== false;
const keepCompleted = option("keep-completed", null);
const concurrency = Number(option("concurrency", 50));
const connection = { host: "127.0.0.1", port, maxRetriesPerRequest: null };
const DATA = { to: "user@example.com", n: 1 };
const NAME = "send-email";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function info(client) {
  const text = await client.info("memory");
  const out = {};
  for (const line of text.split("\r\n")) {
    const [key, value] = line.split(":");
    if (value !== undefined) out[key] = value;
  }
  return out;
}

async function settled(client) {
  // Let lazily freed memory and client buffers settle before reading used_memory.
  await sleep(300);
  return info(client);
}

async function main() {
  const out = {
    bullmq: require("bullmq/package.json").version,
    ioredis: require("ioredis/package.json").version,
    node: process.version,
    jobs,
    batch,
  };
  // Load BullMQ's scripts into the server before the baseline, as redis_memory.py
  // does for conveyor's: one job on a throwaway queue, then every key of it removed.
  const warm = new Queue("warmup", { connection });
  await warm.add(NAME, DATA);
  await warm.obliterate({ force: true });
  await warm.close();

  const queue = new Queue("bench", { connection });
  await queue.waitUntilReady();
  const client = new Redis(connection); // our own: BullMQ 6 keeps its client to itself
  out.redis = (await client.info("server")).match(/redis_version:(\S+)/)[1];
  const leftover = await client.keys("bull:warmup:*");
  if (leftover.length) await client.del(...leftover);
  const before = await settled(client);

  const started = process.hrtime.bigint();
  for (let first = 0; first < jobs; first += batch) {
    const count = Math.min(batch, jobs - first);
    const bulk = [];
    for (let i = 0; i < count; i++) bulk.push({ name: NAME, data: { ...DATA } });
    await queue.addBulk(bulk);
  }
  out.add_seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const after = await settled(client);
  out.used_memory_before = Number(before.used_memory);
  out.used_memory_waiting = Number(after.used_memory);
  out.per_job = (out.used_memory_waiting - out.used_memory_before) / jobs;
  out.dataset_per_job =
    (Number(after.used_memory_dataset) - Number(before.used_memory_dataset)) / jobs;
  out.counts_waiting = await queue.getJobCounts();
  out.dbsize = await client.dbsize();
  const firstJob = (await client.lrange("bull:bench:wait", -1, -1))[0];
  out.job_key = `bull:bench:${firstJob}`;
  out.job_hash = await client.hgetall(out.job_key);
  out.job_hash_encoding = await client.call("OBJECT", "ENCODING", out.job_key);
  out.job_hash_bytes = await client.call("MEMORY", "USAGE", out.job_key, "SAMPLES", "0");
  out.wait_type = await client.type("bull:bench:wait");
  out.wait_bytes = await client.call("MEMORY", "USAGE", "bull:bench:wait", "SAMPLES", "0");
  out.wait_bytes_per_job = out.wait_bytes / jobs;
  out.other_keys = {};
  for (const key of (await client.keys("bull:bench:*")).filter((k) => !/:\d+$/.test(k))) {
    if (key === "bull:bench:wait") continue;
    out.other_keys[key] = [
      await client.type(key),
      await client.call("MEMORY", "USAGE", key, "SAMPLES", "0"),
    ];
  }

  if (drain) {
    const options = { connection, concurrency };
    if (keepCompleted !== null) options.removeOnComplete = { count: Number(keepCompleted) };
    out.keep_completed = keepCompleted === null ? "all (BullMQ default)" : Number(keepCompleted);
    const drainStart = process.hrtime.bigint();
    const worker = new Worker("bench", async () => null, options);
    let completed = 0;
    worker.on("completed", () => {
      completed += 1;
    });
    while (completed < jobs) await sleep(100);
    out.drain_seconds = Number(process.hrtime.bigint() - drainStart) / 1e9;
    await worker.close();
    const drained = await settled(client);
    out.counts_drained = await queue.getJobCounts();
    out.used_memory_drained = Number(drained.used_memory);
    out.drained_per_job = (out.used_memory_drained - out.used_memory_before) / jobs;
    out.dbsize_drained = await client.dbsize();
  }
  await queue.close();
  client.disconnect();
  console.log(JSON.stringify(out));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
