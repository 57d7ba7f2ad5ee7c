/** Command line of `npm run bench:cluster`, parsed and validated like bench/lib/e2e-args.ts does for bench:e2e. */
import { parseArgs } from 'node:util';
import { positiveInt } from './args';
import { positiveNumber, rateList } from './e2e-args';

/** Everything bench:cluster can be told. */
export interface ClusterBenchOptions {
  /** Generated ads of the one catalog both systems serve. */
  ads: number;
  dim: number;
  /** Seed of the catalog; requests use seed + 1 (as bench:e2e's). */
  seed: number;
  /** Shards of the cluster (one replica each). */
  shards: number;
  /** Fixed rates of the open-loop phases, requests per second, ascending, distinct. */
  rates: number[];
  /** Measured seconds of every phase. */
  seconds: number;
  /** Unmeasured seconds before every phase, at that phase's load. */
  warmupSeconds: number;
  /** Requests kept outstanding by the closed-loop (maximum throughput) phase, over all generators. */
  concurrency: number;
  /** Cap on outstanding requests of the open-loop phases, over all generators. */
  maxOutstanding: number;
  /** gRPC channels (separate connections) per load generator process. */
  channels: number;
  /** Load generator processes. */
  procs: number;
  /** Distinct pre-serialized Retrieve requests, used round robin by both systems. */
  pool: number;
  numResults: number;
  /** Deadline of every call, milliseconds. */
  timeoutMs: number;
  /** Requests (the first of the pool) whose answers the two systems are compared on. */
  overlapRequests: number;
  /** Keep the temporary directory (catalog, data directories, JetStream store) instead of deleting it. */
  keep: boolean;
  help: boolean;
}

/** Usage text printed by --help and after a command-line error. */
export const CLUSTER_USAGE = `usage: npm run bench:cluster -- [options]

Generates one catalog and one list of Retrieve requests, then measures, in one run and on this
machine: (1) one node (\`funnel ingest --data\`, \`funnel serve --workers 1\`) and (2) a cluster (a
nats-server with JetStream, \`funnel ingest --nats --shards N\`, one \`funnel serve --nats --shard I/N\`
replica per shard, each bootstrapped from the stream into an empty directory, and \`funnel root\` in
front). Each system gets the same phases: closed-loop maximum throughput (fixed outstanding
calls), then open-loop fixed rates. Reports OK/s, p50, p99, errors by status, CPU per OK request of
every process (utime+stime from /proc over the measured window), RSS, the replicas' bootstrap time,
the publish time and overlap@N of the cluster's answers with the node's. Every process is stopped
on exit, error or signal.

data
  --ads N               generated ads (default 100000)
  --dim D               embedding dimension (default 64)
  --seed S              catalog seed; requests use S + 1 (default 7)
  --shards N            shards of the cluster, one replica each (default 2)
requests
  --pool N              distinct pre-serialized Retrieve requests (default 4096)
  --num-results N       num_results of every request: the N of overlap@N (default 50)
  --timeout-ms N        deadline of every call (default 5000)
  --overlap N           requests (the pool's first) compared between the two systems (default 100)
load
  --rates LIST          fixed Retrieve rates, requests/s (default 200,400)
  --seconds S           measured seconds per phase (default 10)
  --warmup-seconds S    unmeasured seconds before each phase (default 2; 0 for none)
  --concurrency N       outstanding requests of the maximum-throughput phase (default 16)
  --max-outstanding N   cap on outstanding requests at a fixed rate (default 256; requests it holds
                        back past the phase's end are counted as "unsent")
  --channels N          gRPC channels (separate TCP connections) per load generator (default 4)
  --procs N             load generator processes (default 1)
other
  --keep                keep the temporary directory (catalog, data directories, JetStream store)
  environment: NATS_SERVER=PATH names the nats-server binary (default: PATH, then /usr/sbin)
`;

/** Parses and validates argv (without node and script); throws an Error naming the offending option. */
export function parseClusterArgs(argv: readonly string[]): ClusterBenchOptions {
  const { values } = parseArgs({
    args: [...argv],
    strict: true,
    allowPositionals: false,
    options: {
      ads: { type: 'string' },
      dim: { type: 'string' },
      seed: { type: 'string' },
      shards: { type: 'string' },
      pool: { type: 'string' },
      'num-results': { type: 'string' },
      'timeout-ms': { type: 'string' },
      overlap: { type: 'string' },
      rates: { type: 'string' },
      seconds: { type: 'string' },
      'warmup-seconds': { type: 'string' },
      concurrency: { type: 'string' },
      'max-outstanding': { type: 'string' },
      channels: { type: 'string' },
      procs: { type: 'string' },
      keep: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const seedRaw = values.seed ?? '7';
  if (!/^\d+$/.test(seedRaw.trim()) || !Number.isSafeInteger(Number(seedRaw))) {
    throw new Error(`--seed must be a whole number, got "${seedRaw}"`);
  }
  const dim = positiveInt('dim', values.dim, 64);
  if (dim > 4096) throw new Error(`--dim must be at most 4096, got ${dim}`);
  const shards = positiveInt('shards', values.shards, 2);
  if (shards < 2) throw new Error(`--shards must be at least 2 (a root over one shard is not a cluster), got ${shards}`);
  const procs = positiveInt('procs', values.procs, 1);
  const concurrency = positiveInt('concurrency', values.concurrency, 16);
  if (concurrency < procs) throw new Error(`--concurrency (${concurrency}) must be at least --procs (${procs})`);
  const pool = positiveInt('pool', values.pool, 4096);
  const overlapRequests = positiveInt('overlap', values.overlap, 100);
  if (overlapRequests > pool) throw new Error(`--overlap (${overlapRequests}) must be at most --pool (${pool})`);
  return {
    ads: positiveInt('ads', values.ads, 100_000),
    dim,
    seed: Number(seedRaw),
    shards,
    rates: rateList(values.rates, [200, 400]),
    seconds: positiveNumber('seconds', values.seconds, 10),
    warmupSeconds: positiveNumber('warmup-seconds', values['warmup-seconds'], 2, true),
    concurrency,
    maxOutstanding: positiveInt('max-outstanding', values['max-outstanding'], 256),
    channels: positiveInt('channels', values.channels, 4),
    procs,
    pool,
    numResults: positiveInt('num-results', values['num-results'], 50),
    timeoutMs: positiveInt('timeout-ms', values['timeout-ms'], 5000),
    overlapRequests,
    keep: values.keep === true,
    help: values.help === true,
  };
}
