/** Command line of `npm run bench:e2e`, parsed and validated like bench/lib/args.ts does for bench:ann. */
import * as os from 'node:os';
import { parseArgs } from 'node:util';
import { positiveInt } from './args';

/** Everything bench:e2e can be told. */
export interface E2eBenchOptions {
  /** Generated ads of the cached data directory. */
  ads: number;
  dim: number;
  /** Seed of the catalog; requests use seed + 1. */
  seed: number;
  /** Fixed rates of the open-loop phases, requests per second, ascending, distinct. */
  rates: number[];
  /** Measured seconds of every phase. */
  seconds: number;
  /** Unmeasured seconds before every phase, at that phase's load. */
  warmupSeconds: number;
  /** Requests kept outstanding by the closed-loop (maximum throughput) phases, over all generators, per server worker. */
  concurrency: number;
  /** Cap on outstanding requests of the open-loop phases, over all generators, per server worker. */
  maxOutstanding: number;
  /** Worker counts of `funnel serve --workers N`, ascending, distinct: one server each. */
  workers: number[];
  /** Open-loop overload phases, as multiples of each server's measured maximum, ascending (empty: none). */
  overload: number[];
  /** Fixed rate of the traced comparison (undefined: the lowest of `rates`; 0: no comparison). */
  tracingRate?: number;
  /** Paired rounds on the traced server: sampling 0 and 1 by config reload, alternated (0: none). */
  tracingRounds: number;
  /** gRPC channels (separate connections) per load generator process. */
  channels: number;
  /** Load generator processes; undefined = chosen from the core count. */
  procs?: number;
  /** Distinct pre-serialized Retrieve requests, used round robin. */
  pool: number;
  numResults: number;
  /** Deadline of every call, milliseconds. */
  timeoutMs: number;
  /** Existing data directory to serve instead of the generated cache. */
  data?: string;
  /** Stage config file passed to `funnel serve --config`. */
  config?: string;
  help: boolean;
}

/** Usage text printed by --help and after a command-line error. */
export const E2E_USAGE = `usage: npm run bench:e2e -- [options]

Starts \`funnel serve\` on a generated catalog as a child process and drives it over gRPC from a
separate load generator process: (1) closed-loop maximum throughput of grpc.health.v1.Health/Check,
(2) the same for Retrieve, (3) Retrieve at fixed rates (open loop; latency measured from each
request's ideal send time, so a stalled server is not hidden by a waiting client), (4) for each
--workers count, a server started with that many workers: its Retrieve maximum, the memory of each
of its processes, and open-loop overload phases at multiples of that maximum. Server CPU per
Retrieve is read from /proc over the whole process tree and on the JavaScript threads alone; a
summary table ends the run with each target, the figure measured and PASS or MISS.

data
  --ads N               generated ads (default 1000000); the data directory is cached under
                        bench/.cache/e2e-<ads>-d<dim>-s<seed>/ and reused (1M takes minutes to build)
  --dim D               embedding dimension (default 64)
  --seed S              catalog seed; requests use S + 1 (default 1)
  --data DIR            serve this existing data directory instead (--ads is then ignored)
  --config FILE         stage config for funnel serve (default: built-in)
requests
  --pool N              distinct pre-serialized Retrieve requests (default 4096)
  --num-results N       num_results of every request (default 50)
  --timeout-ms N        deadline of every call (default 5000)
load
  --rates LIST          fixed Retrieve rates, requests/s (default 250,500,1000,1500,2000)
  --seconds S           measured seconds per phase (default 10)
  --warmup-seconds S    unmeasured seconds before each phase (default 2; 0 for none)
  --concurrency N       outstanding requests of the maximum-throughput phases (default 64)
  --max-outstanding N   cap on outstanding requests at a fixed rate (default 1024, above the server's
                        default limits.max_in_flight of 128, so that its shedding shows as
                        RESOURCE_EXHAUSTED; requests the cap holds back past the phase's end are
                        counted as "unsent"). --concurrency and --max-outstanding are per server
                        worker: a server with --workers N gets N times as many
  --channels N          gRPC channels (separate TCP connections) per load generator (default 4)
  --procs N             load generator processes (default: 1 per 4 cores, 1 to 4)
workers and overload
  --workers LIST        worker counts, one server each started with \`funnel serve --workers N\`
                        (node:cluster spreads connections, not calls, so channels per generator are
                        raised to give every worker at least 4); the first (smallest) count runs
                        every phase above, the others their Retrieve maximum and the overload
                        phases. Default: 1 and the core count (1 alone on one core). A server
                        without --workers is measured once, as one process
  --overload LIST       open-loop Retrieve phases at these multiples of each server's measured
                        maximum (default 0.5,1.5,3; "none" for none): goodput, p99 of OK answers
                        and failures by status code, against the issue's overload targets
tracing
  environment: FUNNEL_BENCH_SERVER=PATH measures another build's dist/src/cli/main.js (a
  baseline commit's) with this same bench
  --tracing-rate R      after the phases above, restart the server with 100% sampling exporting
                        OTLP/HTTP (protobuf) to a receiver in this process on loopback, and repeat
                        the Health and Retrieve maximum-throughput phases (the Health one, so both
                        servers have the same history before Retrieve) and the fixed rate R
                        (default: the lowest of --rates); 0 skips the tracing comparison
  --tracing-rounds N    then, on that same server, N paired rounds of the maximum-throughput
                        phase and the rate R with tracing.sample_ratio 0 and 1 set by config
                        reload (alternating which goes first), so both sides run on one process
                        (default 3; 0 for none). The verdict uses their medians
`;

/** `raw` as an integer >= 0, `fallback` when absent; throws naming `--name` otherwise. */
function wholeNumber(name: string, raw: string | undefined, fallback: number): number {
  if (raw === undefined) return fallback;
  if (!/^\d+$/.test(raw.trim())) throw new Error(`--${name} must be a whole number, got "${raw}"`);
  return Number(raw);
}

/** `raw` as a positive number (or >= 0 with `allowZero`), `fallback` when absent; throws naming `--name` otherwise. */
export function positiveNumber(name: string, raw: string | undefined, fallback: number, allowZero = false): number {
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(value) || value < 0 || (!allowZero && value === 0)) {
    throw new Error(`--${name} must be a ${allowZero ? 'non-negative' : 'positive'} number, got "${raw}"`);
  }
  return value;
}

/** A comma-separated list of positive numbers, ascending and distinct; `fallback` when absent. */
export function rateList(raw: string | undefined, fallback: number[], name = 'rates'): number[] {
  if (raw === undefined) return fallback;
  const values = raw.split(',').map((part) => positiveNumber(name, part, 0));
  return [...new Set(values)].sort((a, b) => a - b);
}

function countList(name: string, raw: string | undefined, fallback: number[]): number[] {
  if (raw === undefined) return fallback;
  const values = raw.split(',').map((part) => positiveInt(name, part, 0));
  return [...new Set(values)].sort((a, b) => a - b);
}

/** Worker counts measured when --workers is not given: 1, and `cores` too when there is more than one. */
export function defaultWorkers(cores: number): number[] {
  return cores > 1 ? [1, cores] : [1];
}

/**
 * Parses and validates argv (without node and script); throws an Error naming the offending
 * option. `cores` (default: this machine's) sets the default --workers.
 */
export function parseE2eArgs(argv: readonly string[], cores = os.availableParallelism()): E2eBenchOptions {
  const { values } = parseArgs({
    args: [...argv],
    strict: true,
    allowPositionals: false,
    options: {
      ads: { type: 'string' },
      dim: { type: 'string' },
      seed: { type: 'string' },
      data: { type: 'string' },
      config: { type: 'string' },
      pool: { type: 'string' },
      'num-results': { type: 'string' },
      'timeout-ms': { type: 'string' },
      rates: { type: 'string' },
      seconds: { type: 'string' },
      'warmup-seconds': { type: 'string' },
      concurrency: { type: 'string' },
      'max-outstanding': { type: 'string' },
      channels: { type: 'string' },
      procs: { type: 'string' },
      workers: { type: 'string' },
      overload: { type: 'string' },
      'tracing-rate': { type: 'string' },
      'tracing-rounds': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const seedRaw = values.seed ?? '1';
  if (!/^-?\d+$/.test(seedRaw.trim()) || !Number.isSafeInteger(Number(seedRaw))) {
    throw new Error(`--seed must be an integer, got "${seedRaw}"`);
  }
  const dim = positiveInt('dim', values.dim, 64);
  if (dim > 4096) throw new Error(`--dim must be at most 4096, got ${dim}`);
  if (values.data !== undefined && values.data.trim() === '') throw new Error('--data must name a directory');
  const procs = values.procs === undefined ? undefined : positiveInt('procs', values.procs, 0);
  const concurrency = positiveInt('concurrency', values.concurrency, 64);
  if (procs !== undefined && concurrency < procs) {
    throw new Error(`--concurrency (${concurrency}) must be at least --procs (${procs})`);
  }
  return {
    ads: positiveInt('ads', values.ads, 1_000_000),
    dim,
    seed: Number(seedRaw),
    rates: rateList(values.rates, [250, 500, 1000, 1500, 2000]),
    tracingRate: values['tracing-rate'] === undefined ? undefined : positiveNumber('tracing-rate', values['tracing-rate'], 0, true),
    tracingRounds: wholeNumber('tracing-rounds', values['tracing-rounds'], 3),
    seconds: positiveNumber('seconds', values.seconds, 10),
    warmupSeconds: positiveNumber('warmup-seconds', values['warmup-seconds'], 2, true),
    concurrency,
    maxOutstanding: positiveInt('max-outstanding', values['max-outstanding'], 1024),
    workers: countList('workers', values.workers, defaultWorkers(cores)),
    overload: values.overload?.trim() === 'none' ? [] : rateList(values.overload, [0.5, 1.5, 3], 'overload'),
    channels: positiveInt('channels', values.channels, 4),
    procs,
    pool: positiveInt('pool', values.pool, 4096),
    numResults: positiveInt('num-results', values['num-results'], 50),
    timeoutMs: positiveInt('timeout-ms', values['timeout-ms'], 5000),
    data: values.data,
    config: values.config,
    help: values.help === true,
  };
}

/** Load generator processes for `cores` logical cores when --procs is not given: one per 4 cores, 1 to 4. */
export function defaultProcs(cores: number): number {
  return Math.max(1, Math.min(4, Math.floor(cores / 4)));
}
