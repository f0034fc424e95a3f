// BullMQ for Node (npm `bullmq`; `ioredis` for the job body's record): a Worker with `concurrency: 50`
// in one node process, default job options (completed jobs kept). Bulk:
// `Queue.addBulk`. The job body is the same RPUSH of "number start-time" as the
// Python peers', through ioredis. Crash test: the default lock/stalled-job
// mechanism with `lockDuration` and `stalledInterval` of CMP_LEASE seconds.
//
// Same command line as ../harness.py: node bullmq_node.js enqueue|latency|worker|versions
// [--mode one|bulk] [--start N] [--count N] [--pause S]; prints one JSON object.
'use strict';

const { Queue, Worker } = require('bullmq');
const IORedis = require('ioredis');
const { performance } = require('perf_hooks');

const env = process.env;
const QUEUE_URL = env.CMP_QUEUE_URL || 'redis://127.0.0.1:6379/13';
const RECORD_URL = env.CMP_RECORD_URL || 'redis://127.0.0.1:6379/14';
const RELIABLE = env.CMP_RELIABLE === '1';
const LEASE_MS = Math.round(parseFloat(env.CMP_LEASE || '5') * 1000);
const CONCURRENCY = parseInt(env.CMP_CONCURRENCY || '50', 10);
const DONE_KEY = 'cmp:done';
const NAME = 'cmp';
const BULK_CHUNK = 1000;

const now = () => (performance.timeOrigin + performance.now()) / 1000;
const sleep = (s) => new Promise((resolve) => setTimeout(resolve, s * 1000));
const url = new URL(QUEUE_URL);
// options, not a client: bullmq makes its own connections with its own ioredis
const connection = () => ({
  host: url.hostname, port: parseInt(url.port || '6379', 10), db: parseInt(url.pathname.slice(1) || '0', 10),
});

function parse(argv) {
  const args = { action: argv[0], mode: 'one', start: 0, count: 0, pause: 0.02 };
  for (let i = 1; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    args[key] = key === 'mode' ? argv[i + 1] : parseFloat(argv[i + 1]);
  }
  return args;
}

async function enqueue(queue, mode, start, count) {
  const numbers = Array.from({ length: count }, (_, i) => start + i);
  const began = performance.now();
  if (mode === 'bulk') {
    for (let i = 0; i < count; i += BULK_CHUNK) {
      await queue.addBulk(numbers.slice(i, i + BULK_CHUNK).map((n) => ({ name: 'job', data: { n } })));
    }
  } else {
    for (const n of numbers) await queue.add('job', { n });
  }
  return { seconds: (performance.now() - began) / 1000 };
}

async function latency(queue, start, count, pause) {
  const record = new IORedis(RECORD_URL);
  await queue.add('job', { n: start - 1 });
  const deadline = Date.now() + 120000;
  const warm = `${start - 1} `;
  for (;;) {
    const items = await record.lrange(DONE_KEY, 0, -1);
    if (items.some((item) => item.startsWith(warm))) break;
    if (Date.now() > deadline) return { error: 'the worker never ran the warm-up job' };
    await sleep(0.05);
  }
  await sleep(0.5);
  const sent = {};
  for (let n = start; n < start + count; n++) {
    sent[n] = now();
    await queue.add('job', { n });
    await sleep(pause);
  }
  record.disconnect();
  return { sent };
}

function work() {
  const record = new IORedis(RECORD_URL);
  const options = { connection: connection(), concurrency: CONCURRENCY };
  if (RELIABLE) Object.assign(options, { lockDuration: LEASE_MS, stalledInterval: LEASE_MS });
  const worker = new Worker(NAME, async (job) => {
    await record.rpush(DONE_KEY, `${job.data.n} ${now().toFixed(6)}`);
  }, options);
  worker.on('error', (err) => console.error(err));
}

async function main() {
  const args = parse(process.argv.slice(2));
  if (args.action === 'worker') return work();
  let out;
  if (args.action === 'versions') {
    out = {
      bullmq: require('bullmq/package.json').version,
      ioredis: require('ioredis/package.json').version,
      node: process.versions.node,
    };
  } else {
    const queue = new Queue(NAME, { connection: connection() });
    out = args.action === 'enqueue'
      ? await enqueue(queue, args.mode, args.start, args.count)
      : await latency(queue, args.start, args.count, args.pause);
    await queue.close();
  }
  console.log(JSON.stringify(out));
  process.exit(0);
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
