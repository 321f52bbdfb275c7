// BullMQ's processing rate on the same Redis, for comparison with evq:
// adds N jobs with a 100-byte payload, then a Worker with concurrency 50 and
// a no-op processor works through them.  Prints one JSON line.
//   node bullmq_bench.mjs PORT [N]
import { Queue, Worker } from 'bullmq';

const port = Number(process.argv[2]);
const n = Number(process.argv[3] || 50000);
const connection = { host: '127.0.0.1', port };
const name = `bench-${process.pid}`;
const payload = { p: 'x'.repeat(100) };

const queue = new Queue(name, { connection });
let t0 = Date.now();
for (let i = 0; i < n; i += 1000) {
  const jobs = [];
  for (let k = i; k < Math.min(n, i + 1000); k++)
    jobs.push({ name: 'bench.event', data: payload });
  await queue.addBulk(jobs);
}
const enqueuePerS = n / ((Date.now() - t0) / 1000);

let done = 0;
t0 = Date.now();
const finished = new Promise((resolve) => {
  const worker = new Worker(name, async () => {}, { connection, concurrency: 50 });
  worker.on('completed', () => {
    if (++done === n) resolve(worker);
  });
});
const worker = await finished;
const processPerS = n / ((Date.now() - t0) / 1000);
await worker.close();
await queue.obliterate({ force: true });
await queue.close();
console.log(JSON.stringify({ bullmq_enqueue_per_s: Math.round(enqueuePerS),
                             bullmq_process_per_s: Math.round(processPerS) }));
