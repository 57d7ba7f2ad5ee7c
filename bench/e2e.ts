/**
 * `npm run bench:e2e`: the whole service under load. Serves a generated catalog (1M ads x 64-d by
 * default, cached under bench/.cache) with `funnel serve` as a child process and drives it over
 * gRPC from separate load generator processes (bench/lib/loadgen.ts) in three kinds of phase:
 * closed-loop maximum throughput of grpc.health.v1.Health/Check (the transport's ceiling), the
 * same for Retrieve, then Retrieve at fixed rates (open loop, latency from each request's ideal
 * send time). Then, for every `--workers` count, a server started with `funnel serve --workers N`
 * (node:cluster: a primary and N worker processes on one port), its Retrieve maximum, the memory
 * of each of its processes, and open-loop overload phases at multiples of that maximum. Server
 * CPU is read from /proc over the whole process tree and, apart, on each worker's JavaScript
 * thread. Prints tables, the issues' targets with PASS/MISS, then one JSON line per row. Progress
 * goes to stderr, results to stdout. The servers and the generators are stopped on exit, error
 * or signal.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import * as grpc from '@grpc/grpc-js';
import * as YAML from 'yaml';
import { decodeRetrieveRequest, encodeRetrieveRequest } from '../src/grpc/codec';
import { protoRoot } from '../src/grpc/proto';
import { defaultProcs, E2E_USAGE, E2eBenchOptions, parseE2eArgs } from './lib/e2e-args';
import { buildRequestPool, ensureGeneratedDataDir } from './lib/e2e-data';
import {
  cpuTargets,
  extraWorkerRatios,
  memoryTargetApplies,
  offeredMultiple,
  OverloadPoint,
  overloadTargets,
  ProcessMemoryRow,
  statusCounts,
  TARGET_EXTRA_WORKER_MEMORY,
  TargetRow,
  targetRow,
} from './lib/e2e-targets';
import { HEALTH_CHECK_METHOD, PhaseSpec, RETRIEVE_METHOD } from './lib/loadgen';
import { LoadGenPool, MergedResult, mergeResults } from './lib/loadgen-pool';
import { childPids, cpuDelta, ProcessCpu, processSmaps, processStat, splitTreeCpu, treeCpu, treeMemory } from './lib/proc';
import { splitEven } from './lib/schedule';
import { ServerProcess } from './lib/server-process';
import { fixed, formatTable, grouped, mebibytes, round } from './lib/table';
import { progressLog } from './lib/timing';

/** Issue targets: Retrieve's maximum throughput over Health's, and p99 at 1000/s. */
const TARGET_THROUGHPUT_RATIO = 0.5;
const TARGET_P99_RATE = 1000;
const TARGET_P99_MS = 25;
/** Longest wait for the server to load its data and print its serving line. */
const SERVER_START_TIMEOUT_MS = 20 * 60_000;
/** SIGTERM grace before SIGKILL. */
const SERVER_STOP_GRACE_MS = 30_000;
/** node:cluster hands out connections, not calls: the generators open at least this many per server worker. */
const MIN_CHANNELS_PER_WORKER = 4;
/** Longest wait, after the serving line, for a --workers N primary to have its N children. */
const WORKERS_UP_TIMEOUT_MS = 60_000;
/** Delay between telling the generators to start a phase and its start (so all start together). */
const PHASE_START_DELAY_MS = 300;
/** Idle time between phases. */
const PHASE_GAP_MS = 500;

const repoRoot = path.resolve(__dirname, '..', '..');
/** The server under test: this checkout's, or FUNNEL_BENCH_SERVER (another build's dist/src/cli/main.js, e.g. a baseline commit's) with this bench. */
const mainJs = process.env.FUNNEL_BENCH_SERVER ? path.resolve(process.env.FUNNEL_BENCH_SERVER) : path.join(repoRoot, 'dist', 'src', 'cli', 'main.js');
const log = progressLog();

/** One printed and JSON-emitted row. */
interface E2eRow {
  phase:
    | 'health-max'
    | 'retrieve-max'
    | 'retrieve-rate'
    | 'traced-health-max'
    | 'traced-max'
    | 'traced-rate'
    | 'paired-off-max'
    | 'paired-on-max'
    | 'paired-off-rate'
    | 'paired-on-rate'
    | 'overload';
  method: string;
  /** Worker processes of the server (`funnel serve --workers N`); 1 for a server without the option. */
  workers: number;
  /** Requests per second asked for; null for the closed-loop (maximum throughput) phases. */
  target_qps: number | null;
  /** Overload phases: the multiple of this server's measured maximum asked for. */
  load_multiple: number | null;
  /** Calls the generators sent per second of the window, by the clock (open loop: the rate really offered). */
  offered_qps: number;
  achieved_qps: number;
  /** Retrieve: answers OK and not degraded, per second (null for Health). */
  full_qps: number | null;
  p50_ms: number | null;
  p95_ms: number | null;
  p99_ms: number | null;
  max_ms: number | null;
  mean_ms: number | null;
  ok: number;
  error_count: number;
  errors: Record<string, number>;
  unsent: number;
  /** Open loop: whether due requests had to wait for the outstanding cap (the server fell behind). */
  cap_reached: boolean;
  seconds: number;
  /** Closed loop: calls kept outstanding; open loop: the cap on them. */
  outstanding: number;
  /** CPU of the server's whole process tree (primary and workers, all threads), cores over the window. */
  server_cpu_cores: number | null;
  /** CPU of the serving processes' main (JavaScript) threads, summed, cores over the window. */
  js_cpu_cores: number | null;
  /** Server CPU per OK answer, milliseconds: the whole process tree, and the JavaScript threads alone. */
  cpu_ms_per_call: number | null;
  js_cpu_ms_per_call: number | null;
  /** CPU of each serving process (all threads), cores, in pid order: how evenly the connections were spread. */
  worker_cpu_cores: number[];
  loadgen_cpu_cores: number;
  loadgen_busiest_cpu_share: number;
  send_lag_p99_ms: number | null;
  mean_candidates: number | null;
  degraded_fraction: number | null;
  /** Retrieve: fraction of OK answers naming each stage in degraded_stages. */
  degraded_stages: Record<string, number>;
  first_error?: string;
}


function ms(us: number): number | null {
  return Number.isFinite(us) ? round(us / 1000, 3) : null;
}

function sleep(msDelay: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, msDelay));
}

/** A TCP port free right now (for the server's metrics endpoint). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address() as net.AddressInfo;
      srv.close(() => resolve(addr.port));
    });
  });
}

/** The median of `xs` (NaN when empty). */
function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const v = [...xs].sort((a, b) => a - b);
  const mid = v.length >> 1;
  return v.length % 2 === 1 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

/** Whether `funnel serve` accepts an option (the metrics endpoint is newer than this benchmark). */
function serveAccepts(option: string): boolean {
  const r = spawnSync(process.execPath, [mainJs, 'serve', '--help'], { encoding: 'utf8', timeout: 30_000 });
  return `${r.stdout}${r.stderr}`.includes(option);
}

/** Processes to end however the benchmark ends (`building` kills a running ingest). */
const running: { server?: ServerProcess; generators?: LoadGenPool } = {};
const building = new AbortController();

/** A stand-in OTLP/HTTP trace receiver: accepts every export (200, empty ExportTraceServiceResponse) and counts requests and bytes. */
async function startOtlpReceiver(): Promise<{ port: number; received(): { requests: number; bytes: number }; close(): Promise<void> }> {
  let requests = 0;
  let bytes = 0;
  const server = http.createServer((req, res) => {
    req.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
    });
    req.on('end', () => {
      if (req.method === 'POST' && req.url === '/v1/traces') requests++;
      res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return {
    port: (server.address() as net.AddressInfo).port,
    received: () => ({ requests, bytes }),
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** Stops the generators, then the server (SIGTERM, SIGKILL after a grace period); says how the server exited. */
async function cleanup(): Promise<string | undefined> {
  const { server, generators } = running;
  running.generators = undefined;
  running.server = undefined;
  if (generators) await generators.close();
  if (!server) return undefined;
  const t0 = Date.now();
  const exit = await server.stop(SERVER_STOP_GRACE_MS);
  const how =
    (exit.killed
      ? `did not exit within ${SERVER_STOP_GRACE_MS / 1000}s of SIGTERM: killed`
      : `exited ${exit.signal ? `on ${exit.signal}` : `with code ${exit.code}`} ${((Date.now() - t0) / 1000).toFixed(1)}s after SIGTERM`) +
    (exit.leftovers > 0 ? `, leaving ${exit.leftovers} child process(es) running: killed` : '');
  log(`server ${how}`);
  return how;
}

process.on('exit', () => {
  building.abort();
  running.generators?.killNow();
  running.server?.killNow();
});
let interrupted = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    interrupted = true;
    building.abort();
    log(`${signal}: stopping the server and the load generators`);
    cleanup().finally(() => process.exit(signal === 'SIGINT' ? 130 : 143));
  });
}

function describeErrors(r: MergedResult): string {
  const parts = Object.entries(r.errors).map(([name, n]) => `${name} ${n}`);
  if (r.unsent > 0) parts.push(`unsent ${r.unsent}`);
  if (r.badResponses > 0) parts.push(`unparsable ${r.badResponses}`);
  const total = Object.values(r.errors).reduce((a, b) => a + b, 0) + r.unsent;
  return parts.length === 0 ? '0' : `${total} (${parts.join(', ')})`;
}

/** A server under test and the load generators connected to it. */
interface Subject {
  server: ServerProcess;
  /** Worker processes (1 for a server without --workers). */
  workers: number;
  /** Started with --workers: a node:cluster primary whose children serve; otherwise the server process serves itself. */
  cluster: boolean;
  generators: LoadGenPool;
}

/**
 * A phase on every generator; CPU of the server's process tree read at the measured window's
 * start and end. Closed loop keeps `opts.concurrency` calls outstanding per server worker; open
 * loop caps them at `opts.maxOutstanding` per worker.
 */
async function runPhase(
  subject: Subject,
  opts: E2eBenchOptions,
  phase: E2eRow['phase'],
  method: string,
  rate: number | undefined,
  multiple?: number,
): Promise<{ row: E2eRow; merged: MergedResult }> {
  const { generators, server } = subject;
  const n = generators.size;
  const outstanding = (rate === undefined ? opts.concurrency : opts.maxOutstanding) * subject.workers;
  const shares = splitEven(outstanding, n).map((c) => Math.max(1, c));
  const startAtEpochMs = Date.now() + PHASE_START_DELAY_MS;
  let cpuStart: Map<number, ProcessCpu> | undefined;
  let cpuEnd: Map<number, ProcessCpu> | undefined;
  const results = await generators.run(
    (i): PhaseSpec => ({
      method,
      mode: rate === undefined ? 'closed' : 'open',
      concurrency: shares[i],
      ...(rate !== undefined && { rate: rate / n }),
      part: i,
      parts: n,
      warmupSeconds: opts.warmupSeconds,
      seconds: opts.seconds,
      startAtEpochMs,
      reportMarks: i === 0,
    }),
    (what) => {
      if (what === 'window-start') cpuStart = treeCpu(server.pid);
      else cpuEnd = treeCpu(server.pid);
    },
  );
  const r = mergeResults(results);
  const errorCount = Object.values(r.errors).reduce((a, b) => a + b, 0);
  const retrieve = method === RETRIEVE_METHOD;
  const cpu = cpuStart !== undefined && cpuEnd !== undefined ? splitTreeCpu(cpuDelta(cpuStart, cpuEnd), server.pid, subject.cluster) : undefined;
  const perCall = (seconds: number | undefined): number | null => (seconds === undefined || r.ok === 0 ? null : round((seconds / r.ok) * 1000, 4));
  const row: E2eRow = {
    phase,
    method,
    workers: subject.workers,
    target_qps: rate === undefined ? null : round(rate, 1),
    load_multiple: multiple ?? null,
    offered_qps: round(r.sentInWindow / r.windowSeconds, 1),
    achieved_qps: round(r.ok / r.windowSeconds, 1),
    full_qps: retrieve ? round((r.ok - r.degraded) / r.windowSeconds, 1) : null,
    p50_ms: ms(r.latency.quantileUs(0.5)),
    p95_ms: ms(r.latency.quantileUs(0.95)),
    p99_ms: ms(r.latency.quantileUs(0.99)),
    max_ms: r.latency.count > 0 ? ms(r.latency.maxUs) : null,
    mean_ms: ms(r.latency.meanUs),
    ok: r.ok,
    error_count: errorCount,
    errors: r.errors,
    unsent: r.unsent,
    cap_reached: r.capWaits > 0,
    seconds: r.windowSeconds,
    outstanding,
    server_cpu_cores: cpu ? round(cpu.allSeconds / r.windowSeconds, 2) : null,
    js_cpu_cores: cpu ? round(cpu.jsSeconds / r.windowSeconds, 2) : null,
    cpu_ms_per_call: perCall(cpu?.allSeconds),
    js_cpu_ms_per_call: perCall(cpu?.jsSeconds),
    worker_cpu_cores: cpu ? cpu.perServing.map((c) => round(c / r.windowSeconds, 2)) : [],
    loadgen_cpu_cores: round(r.cpuSeconds / r.windowSeconds, 2),
    loadgen_busiest_cpu_share: round(r.maxGeneratorCpuShare, 2),
    send_lag_p99_ms: rate === undefined ? null : ms(r.sendLag.quantileUs(0.99)),
    mean_candidates: retrieve && r.ok > 0 ? round(r.candidates / r.ok, 1) : null,
    degraded_fraction: retrieve && r.ok > 0 ? round(r.degraded / r.ok, 4) : null,
    degraded_stages: Object.fromEntries(Object.entries(r.degradedStages).map(([k, v]) => [k, round(v / Math.max(1, r.ok), 4)])),
    ...(r.firstError !== undefined && { first_error: r.firstError }),
  };
  return { row, merged: r };
}

interface DecodedResponse {
  candidates?: unknown[];
  degraded?: boolean;
  degraded_stages?: string[];
  stages?: { name?: string; candidates_in?: number; candidates_out?: number; latency_ms?: number; status?: string; detail?: string }[];
}

/** Calls Retrieve with each buffer in turn (one at a time) and decodes the answers in full. */
async function retrieveDecoded(address: string, requests: readonly Buffer[], timeoutMs: number): Promise<DecodedResponse[]> {
  const responseType = protoRoot().lookupType('funnel.v1.RetrieveResponse');
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  const call = (buf: Buffer): Promise<DecodedResponse> =>
    new Promise((resolve, reject) =>
      client.makeUnaryRequest<Buffer, DecodedResponse>(
        RETRIEVE_METHOD,
        (b) => b,
        (b) => responseType.toObject(responseType.decode(b), { arrays: true, defaults: true }) as DecodedResponse,
        buf,
        { deadline: Date.now() + timeoutMs },
        (err, res) => (err ? reject(new Error(`Retrieve failed: ${grpc.status[err.code]}: ${err.details}`)) : resolve(res as DecodedResponse)),
      ),
    );
  try {
    const out: DecodedResponse[] = [];
    for (const r of requests) out.push(await call(r));
    return out;
  } finally {
    client.close();
  }
}

/** Request 0 of the pool again, with `debug` set. */
function debugRequest(pool: readonly Buffer[]): Buffer {
  const { decodeError: _ignored, ...fields } = decodeRetrieveRequest(pool[0]);
  return encodeRetrieveRequest({ ...fields, debug: true });
}

/** One line of per-stage detail: name, candidates in->out, milliseconds, and status when not ok. */
function describeStages(r: DecodedResponse): string {
  return (r.stages ?? [])
    .map((s) => `${s.name} ${s.candidates_in}->${s.candidates_out} ${fixed(s.latency_ms, 2)}ms${s.status && s.status !== 'ok' ? ` [${s.status}]` : ''}`)
    .join(', ');
}

/** A few Retrieve calls decoded in full, to show the answers are real before timing them; throws when one fails. */
async function sanityCheck(address: string, pool: readonly Buffer[], timeoutMs: number): Promise<string[]> {
  const answers = await retrieveDecoded(address, pool.slice(0, 16), timeoutMs);
  const [debug] = await retrieveDecoded(address, [debugRequest(pool)], timeoutMs);
  const mean = answers.reduce((a, r) => a + (r.candidates?.length ?? 0), 0) / answers.length;
  const degraded = answers.filter((r) => r.degraded).length;
  return [
    `sanity:   ${answers.length} Retrieve calls decoded in full: ${mean.toFixed(1)} candidates on average, ${degraded} degraded` +
      `${degraded > 0 ? ` (${[...new Set(answers.flatMap((r) => r.degraded_stages ?? []))].join(', ')})` : ''}`,
    `stages of request 0 (debug, cold): ${describeStages(debug)}`,
  ];
}

/** What one server (one --workers count) measured, beyond its rows. */
interface ServerRun {
  workers: number;
  loadSeconds: number;
  retrieveMax?: E2eRow;
  overload: E2eRow[];
  /** Memory of each process right after the Retrieve maximum: primary first, then workers by start time. */
  memory: ProcessMemoryRow[];
  exit?: string;
  problems: ReadonlyMap<string, number>;
}

function plural(n: number, word: string, many = `${word}s`): string {
  return `${n} ${n === 1 ? word : many}`;
}

/** Resolves once `pid` has at least `n` children or `timeoutMs` has passed; returns how many it has. */
async function waitForChildren(pid: number, n: number, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = childPids(pid).length;
    if (found >= n || Date.now() >= deadline) return found;
    await sleep(100);
  }
}

/** RSS, PSS and private memory of a server's processes: a cluster's primary then its workers (oldest first), or the one server process. */
function memoryByProcess(primary: number, cluster: boolean): ProcessMemoryRow[] {
  const rows: ProcessMemoryRow[] = [];
  const read = (pid: number, role: ProcessMemoryRow['role']): void => {
    const m = processSmaps(pid);
    if (m) rows.push({ pid, role, rss: m.rss, pss: m.pss, privateBytes: m.privateBytes });
  };
  if (!cluster) {
    read(primary, 'server');
    return rows;
  }
  read(primary, 'primary');
  const workers = childPids(primary)
    .map((pid) => ({ pid, start: processStat(pid)?.startTicks ?? Infinity }))
    .sort((a, b) => a.start - b.start || a.pid - b.pid);
  for (const w of workers) read(w.pid, 'worker');
  return rows;
}

function printHeader(
  opts: E2eBenchOptions,
  dataLabel: string,
  server: ServerProcess,
  procs: number,
  serverArgs: string[],
  workersLine: string,
  channelsFor: (workers: number) => number,
  workerCounts: readonly number[],
): void {
  const cpus = os.cpus();
  const b = server.banner;
  console.log('# End-to-end benchmark (funnel serve over gRPC)');
  console.log(`data:     ${dataLabel}`);
  console.log(`server:   node dist/src/cli/main.js serve ${serverArgs.join(' ')} (pid ${server.pid}): ${b.ads ?? '?'} ads, dim ${b.dim ?? '?'}`);
  console.log(`workers:  ${workersLine}`);
  console.log(
    `load:     ${procs} load generator process(es) x ${workerCounts.map((n) => `${channelsFor(n)} channels (${plural(n, 'worker')})`).join(', ')}; ` +
      `closed loop ${opts.concurrency} outstanding per worker; open loop cap ${opts.maxOutstanding} per worker; ` +
      `${opts.seconds}s measured after ${opts.warmupSeconds}s warm-up per phase; ` +
      `num_results ${opts.numResults}; pool of ${opts.pool} requests; deadline ${opts.timeoutMs} ms per call (--timeout-ms)`,
  );
  console.log(
    `overload: ${
      opts.overload.length === 0
        ? 'none (--overload none)'
        : `open loop at ${opts.overload.map((m) => `${m}x`).join(', ')} of each server's measured Retrieve maximum, every worker count; ` +
          `offered = calls sent per second of the window, by the clock; goodput = OK answers per second; deadline ${opts.timeoutMs} ms per call`
    }`,
  );
  console.log(
    `machine:  ${cpus[0]?.model ?? 'unknown CPU'}, ${os.availableParallelism()} logical cores (shared by the server and the load generators), ` +
      `${(os.totalmem() / 1024 ** 3).toFixed(1)} GiB RAM; node ${process.version}`,
  );
  console.log(`load avg: ${os.loadavg().map((x) => x.toFixed(2)).join(' ')} (1/5/15 min) at start`);
  console.log(
    'cpu:      read from /proc: "all" = utime+stime of every thread of the server process and its descendants (a cluster primary and its workers); ' +
      '"JS" = the main thread (/proc/<pid>/task/<pid>/stat) of each serving process, summed; per call = per OK answer',
  );
}

function targetLabel(r: E2eRow): string {
  if (r.target_qps === null) return 'max';
  return r.load_multiple === null ? grouped(r.target_qps) : `${grouped(r.target_qps)} (${r.load_multiple}x)`;
}

function printTable(rows: readonly E2eRow[], merged: readonly MergedResult[]): void {
  const table = rows.map((r, i) => [
    r.phase,
    String(r.workers),
    targetLabel(r),
    grouped(r.achieved_qps),
    fixed(r.p50_ms ?? undefined, 2),
    fixed(r.p95_ms ?? undefined, 2),
    fixed(r.p99_ms ?? undefined, 2),
    fixed(r.max_ms ?? undefined, 2),
    describeErrors(merged[i]),
    fixed(r.server_cpu_cores ?? undefined, 2),
    fixed(r.cpu_ms_per_call ?? undefined, 3),
    fixed(r.js_cpu_ms_per_call ?? undefined, 3),
    fixed(r.loadgen_cpu_cores, 2),
    r.send_lag_p99_ms === null ? '-' : fixed(r.send_lag_p99_ms, 2),
    r.mean_candidates === null ? '-' : fixed(r.mean_candidates, 1),
    r.degraded_fraction === null ? '-' : `${fixed(r.degraded_fraction * 100, 1)}%`,
  ]);
  console.log(
    formatTable(
      'Phases: "max" = closed loop (fixed outstanding calls, latency from send); a rate = open loop ' +
        '(latency from the ideal send time); QPS = calls answered OK per second of the window; ' +
        'server CPU in cores over the window (whole process tree); ms/call = server CPU per OK answer, all threads and JS threads; ' +
        "lag = the generator's own send lateness, p99",
      [
        { header: 'phase', align: 'left' },
        { header: 'workers' },
        { header: 'target/s' },
        { header: 'achieved QPS' },
        { header: 'p50 ms' },
        { header: 'p95 ms' },
        { header: 'p99 ms' },
        { header: 'max ms' },
        { header: 'errors', align: 'left' },
        { header: 'server CPU' },
        { header: 'ms/call' },
        { header: 'JS ms/call' },
        { header: 'loadgen CPU' },
        { header: 'lag ms' },
        { header: 'cands' },
        { header: 'degraded' },
      ],
      table,
    ),
  );
  console.log('');
}

/** The overload phases of every server, with the 1x (closed-loop maximum) they are multiples of. */
function printOverload(runs: readonly ServerRun[]): void {
  const table: string[][] = [];
  for (const run of runs) {
    const max = run.retrieveMax;
    if (!max) continue;
    for (const r of [max, ...run.overload]) {
      const s = statusCounts(r.errors);
      const asked = r.target_qps;
      table.push([
        String(run.workers),
        r.load_multiple === null ? 'max' : `${r.load_multiple}x`,
        asked === null ? '-' : grouped(asked),
        grouped(r.offered_qps),
        asked === null || max.achieved_qps <= 0 ? '-' : `${fixed(r.offered_qps / max.achieved_qps, 2)}x`,
        grouped(r.achieved_qps),
        max.achieved_qps > 0 ? fixed(r.achieved_qps / max.achieved_qps, 3) : '-',
        fixed(r.p50_ms ?? undefined, 2),
        fixed(r.p99_ms ?? undefined, 2),
        grouped(r.ok),
        grouped(s.resourceExhausted),
        grouped(s.deadlineExceeded),
        grouped(s.other),
        grouped(r.unsent),
        fixed(r.cpu_ms_per_call ?? undefined, 3),
        fixed(r.js_cpu_ms_per_call ?? undefined, 3),
        fixed(r.loadgen_busiest_cpu_share * 100, 0) + '%',
      ]);
    }
  }
  if (table.length === 0) return;
  console.log(
    formatTable(
      'Overload: Retrieve at multiples of each server\'s closed-loop maximum ("max" row), open loop; offered = calls sent per second ' +
        'of the window (what the generators managed, not what was asked); goodput = OK answers per second; p50/p99 of OK answers; ' +
        'counts over the window by status; unsent = due calls the outstanding cap held back; loadgen = busiest generator\'s share of a core',
      [
        { header: 'workers' },
        { header: 'load' },
        { header: 'asked/s' },
        { header: 'offered/s' },
        { header: 'offered' },
        { header: 'goodput/s' },
        { header: 'of max' },
        { header: 'p50 ms' },
        { header: 'p99 ms' },
        { header: 'OK' },
        { header: 'RES_EXHAUSTED' },
        { header: 'DEADLINE' },
        { header: 'other' },
        { header: 'unsent' },
        { header: 'ms/call' },
        { header: 'JS ms/call' },
        { header: 'loadgen' },
      ],
      table,
    ),
  );
  console.log('');
}

/** Memory of each process of each server, read right after its Retrieve maximum. */
function printMemory(runs: readonly ServerRun[]): void {
  const table: string[][] = [];
  for (const run of runs) {
    const workers = run.memory.filter((m) => m.role === 'worker');
    const ratios = new Map(extraWorkerRatios(workers).map((r) => [r.pid, r]));
    for (const m of run.memory) {
      const ratio = ratios.get(m.pid);
      const isFirstWorker = m.role === 'worker' && m.pid === workers[0]?.pid;
      table.push([
        String(run.workers),
        m.role === 'worker' ? `worker ${workers.indexOf(m) + 1}` : m.role,
        String(m.pid),
        mebibytes(m.rss),
        mebibytes(m.pss),
        mebibytes(m.privateBytes),
        ratio ? `${fixed(ratio.privateShare * 100, 1)}%` : isFirstWorker ? '(first)' : '-',
        ratio ? `${fixed(ratio.rssShare * 100, 1)}%` : isFirstWorker ? '(first)' : '-',
      ]);
    }
  }
  if (table.length === 0) return;
  console.log(
    formatTable(
      'Memory per process after the Retrieve maximum (/proc/<pid>/smaps_rollup, MiB): private = Private_Clean + Private_Dirty; ' +
        "the last two columns: each worker beyond the first, its private memory and its RSS over the first worker's RSS",
      [
        { header: 'workers' },
        { header: 'process', align: 'left' },
        { header: 'pid' },
        { header: 'RSS' },
        { header: 'PSS' },
        { header: 'private' },
        { header: 'private/1st RSS' },
        { header: 'RSS/1st RSS' },
      ],
      table,
    ),
  );
  console.log('');
}

function printTargets(targets: readonly TargetRow[]): void {
  console.log(
    formatTable(
      'Summary: the issues\' targets (PASS/MISS; info = no target stated for this case)',
      [
        { header: 'target', align: 'left' },
        { header: 'measured', align: 'left' },
        { header: 'target', align: 'left' },
        { header: 'verdict', align: 'left' },
      ],
      targets.map((t) => [t.name, t.measured, t.target, t.verdict]),
    ),
  );
  console.log('');
}

async function main(argv: string[]): Promise<number> {
  let opts: E2eBenchOptions;
  try {
    opts = parseE2eArgs(argv);
  } catch (err) {
    process.stderr.write(`bench:e2e: ${(err as Error).message}\n\n${E2E_USAGE}`);
    return 2;
  }
  if (opts.help) {
    process.stdout.write(E2E_USAGE);
    return 0;
  }
  if (!fs.existsSync(mainJs)) {
    process.stderr.write(`bench:e2e: ${mainJs} is missing; run npm run build first\n`);
    return 2;
  }
  const cores = os.availableParallelism();
  const procs = Math.min(opts.procs ?? defaultProcs(cores), opts.concurrency);

  let dataDir: string;
  let dataLabel: string;
  if (opts.data !== undefined) {
    dataDir = path.resolve(opts.data);
    if (!fs.existsSync(dataDir) || !fs.statSync(dataDir).isDirectory()) {
      process.stderr.write(`bench:e2e: --data ${opts.data} is not a directory\n`);
      return 2;
    }
    dataLabel = `${dataDir} (given; requests generated with seed ${opts.seed + 1})`;
  } else {
    const t0 = Date.now();
    const data = await ensureGeneratedDataDir(mainJs, path.join(repoRoot, 'bench', '.cache'), opts, log, building.signal);
    dataDir = data.dir;
    dataLabel =
      `GENERATED catalog: ${grouped(opts.ads)} ads x ${opts.dim}-d, seed ${opts.seed}, ` +
      `${data.built ? `built in ${((Date.now() - t0) / 1000).toFixed(0)}s` : 'cached'} at ${path.relative(repoRoot, dataDir)}`;
  }

  const baseArgs = ['--data', dataDir, '--port', '0', '--host', '127.0.0.1'];
  if (opts.config !== undefined) baseArgs.push('--config', path.resolve(opts.config));
  // Metrics stay on, as in production, on a free port (the default 9464 may be taken on a shared machine).
  const metrics = serveAccepts('--metrics-port');
  // `funnel serve --workers N` is newer than this benchmark: without it, one process is measured.
  const hasWorkers = serveAccepts('--workers');
  const workerCounts = hasWorkers ? opts.workers : [1];
  const workersLine = hasWorkers
    ? `${workerCounts.join(', ')} (one server each, \`funnel serve --workers N\`: a node:cluster primary and N worker processes on one port)`
    : `ONE server process: this funnel serve has no --workers option${opts.workers.some((n) => n !== 1) ? ` (asked for ${opts.workers.join(', ')}; measured 1 only)` : ''}`;
  const argsFor = async (workers: number): Promise<string[]> => [
    ...baseArgs,
    ...(hasWorkers ? ['--workers', String(workers)] : []),
    ...(metrics ? ['--metrics-port', String(await freePort())] : []),
  ];
  // node:cluster hands whole connections to workers round robin: every worker needs several.
  const channelsFor = (workers: number): number => Math.max(opts.channels, Math.ceil((MIN_CHANNELS_PER_WORKER * workers) / procs));

  const rows: E2eRow[] = [];
  const merged: MergedResult[] = [];
  const runs: ServerRun[] = [];
  const notes: string[] = [];
  let pool: Buffer[] = [];
  let dim = opts.dim;
  let ads: number | undefined;
  let firstArgs: string[] = [];
  let memLoaded: { rss?: number; peakRss?: number } = {};
  let memEnd: { rss?: number; peakRss?: number } = {};
  let peakRssSeen = 0;
  let warm: DecodedResponse | undefined;

  for (const [k, workers] of workerCounts.entries()) {
    const isFirst = k === 0;
    const serverArgs = await argsFor(workers);
    log(`starting funnel serve${hasWorkers ? ` --workers ${workers}` : ''} on ${dataDir}`);
    const serverStarted = Date.now();
    const server = await ServerProcess.start(mainJs, serverArgs, SERVER_START_TIMEOUT_MS);
    running.server = server;
    // `--workers 1` may serve in the primary itself (no children) or fork one worker: either is measured as it is.
    const cluster = hasWorkers && (workers > 1 || childPids(server.pid).length > 0);
    const servingProcesses = cluster ? await waitForChildren(server.pid, workers, WORKERS_UP_TIMEOUT_MS) : 1;
    if (servingProcesses < workers) notes.push(`--workers ${workers}: the primary had only ${plural(servingProcesses, 'child', 'children')} ${WORKERS_UP_TIMEOUT_MS / 1000}s after its serving line`);
    const loadSeconds = (Date.now() - serverStarted) / 1000;
    const loaded = treeMemory(server.pid);
    const address = `127.0.0.1:${server.banner.port}`;
    log(`serving on ${address} after ${loadSeconds.toFixed(1)}s (${server.banner.ads ?? '?'} ads${cluster ? `, ${plural(servingProcesses, 'worker process', 'worker processes')}` : ''})`);

    if (isFirst) {
      firstArgs = serverArgs;
      memLoaded = loaded;
      peakRssSeen = loaded.rss ?? 0;
      ads = server.banner.ads;
      dim = server.banner.dim ?? opts.dim;
      log(`building ${opts.pool} requests (dim ${dim})`);
      // Embeddings come from the first rows of the generated catalog (the first rows do not depend on its size).
      const sourceRows = opts.data !== undefined ? 8 * opts.pool : Math.min(opts.ads, 8 * opts.pool);
      pool = buildRequestPool({ size: opts.pool, dim, seed: opts.seed, sourceRows, numResults: opts.numResults });
      printHeader(opts, dataLabel, server, procs, serverArgs, workersLine, channelsFor, workerCounts);
      console.log(
        `startup:  serving line after ${loadSeconds.toFixed(1)}s; server RSS ${mebibytes(loaded.rss)} MiB once loaded` +
          `${loaded.processes > 1 ? ` (summed over ${loaded.processes} processes)` : ''}`,
      );
    } else {
      console.log(
        `server:   ... serve ${serverArgs.slice(baseArgs.length).join(' ')} (pid ${server.pid}, ${plural(servingProcesses, 'worker process', 'worker processes')}): ` +
          `serving line after ${loadSeconds.toFixed(1)}s; RSS ${mebibytes(loaded.rss)} MiB once loaded, summed over ${loaded.processes} processes`,
      );
    }
    for (const line of await sanityCheck(address, pool, opts.timeoutMs)) console.log(hasWorkers ? `${line} [${plural(workers, 'worker')}]` : line);

    const channels = channelsFor(workers);
    log(`forking ${procs} load generator(s), ${channels} channels each`);
    const generators = await LoadGenPool.start(procs, (i) => ({ address, channels, requests: pool, timeoutMs: opts.timeoutMs, generator: i }));
    running.generators = generators;
    const subject: Subject = { server, workers, cluster, generators };
    const run: ServerRun = { workers, loadSeconds, overload: [], memory: [], problems: server.problems };
    runs.push(run);

    const runLogged = async (phase: E2eRow['phase'], method: string, rate?: number, multiple?: number): Promise<E2eRow> => {
      const what = multiple !== undefined ? ` at ${multiple}x = ${grouped(rate)}/s` : rate !== undefined ? ` at ${rate}/s` : ` (${opts.concurrency * workers} outstanding)`;
      log(`${phase}${what}${hasWorkers ? `, ${plural(workers, 'worker')}` : ''}: ${opts.warmupSeconds}s warm-up + ${opts.seconds}s`);
      const { row, merged: m } = await runPhase(subject, opts, phase, method, rate, multiple);
      rows.push(row);
      merged.push(m);
      if (isFirst) peakRssSeen = Math.max(peakRssSeen, treeMemory(server.pid).rss ?? 0);
      log(
        `  ${grouped(row.achieved_qps)} QPS${rate !== undefined ? ` (offered ${grouped(row.offered_qps)}/s)` : ''}, p50 ${fixed(row.p50_ms ?? undefined, 2)} ms, ` +
          `p99 ${fixed(row.p99_ms ?? undefined, 2)} ms, CPU ${fixed(row.cpu_ms_per_call ?? undefined, 3)} ms/call (JS ${fixed(row.js_cpu_ms_per_call ?? undefined, 3)}), ` +
          `errors ${describeErrors(m)}`,
      );
      if (server.exitStatus !== undefined) throw new Error(`the server exited during ${phase}: ${server.stderrTail.join('\n')}`);
      if (cluster) {
        const now = childPids(server.pid).length;
        if (now < servingProcesses) notes.push(`${phase} (${plural(workers, 'worker')}): ${servingProcesses - now} worker process(es) gone by the phase's end`);
      }
      await sleep(PHASE_GAP_MS);
      return row;
    };

    const phases: { phase: E2eRow['phase']; method: string; rate?: number }[] = [
      ...(isFirst ? [{ phase: 'health-max' as const, method: HEALTH_CHECK_METHOD }] : []),
      { phase: 'retrieve-max', method: RETRIEVE_METHOD },
      ...(isFirst ? opts.rates.map((rate) => ({ phase: 'retrieve-rate' as const, method: RETRIEVE_METHOD, rate })) : []),
    ];
    for (const p of phases) {
      const row = await runLogged(p.phase, p.method, p.rate);
      if (p.phase === 'retrieve-max') {
        run.retrieveMax = row;
        run.memory = memoryByProcess(server.pid, cluster);
      }
    }
    const max = run.retrieveMax?.achieved_qps ?? 0;
    if (opts.overload.length > 0 && max <= 0) notes.push(`${plural(workers, 'worker')}: no Retrieve answered OK at the maximum, so no overload phases`);
    else for (const m of opts.overload) run.overload.push(await runLogged('overload', RETRIEVE_METHOD, m * max, m));

    if (isFirst) memEnd = treeMemory(server.pid);
    await generators.close();
    running.generators = undefined;
    if (isFirst) warm = (await retrieveDecoded(address, [debugRequest(pool), debugRequest(pool), debugRequest(pool)], opts.timeoutMs))[2];
    run.exit = await cleanup();
  }
  const firstRun = runs[0];

  // Tracing comparison: the same server restarted with 100% sampling to an OTLP receiver here.
  const tracingRate = opts.tracingRate ?? opts.rates[0];
  let traced: { spans: { requests: number; bytes: number }; exit?: string } | undefined;
  if (tracingRate !== undefined && tracingRate > 0) {
    const receiver = await startOtlpReceiver();
    try {
      const env = {
        ...process.env,
        OTEL_TRACES_EXPORTER: 'otlp',
        OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
        OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${receiver.port}`,
        OTEL_TRACES_SAMPLER: 'always_on',
      };
      // The traced server reads a config of its own: the paired rounds below set
      // tracing.sample_ratio in it and reload.
      const configDir = fs.mkdtempSync(path.join(os.tmpdir(), 'funnel-bench-e2e-'));
      const configFile = path.join(configDir, 'funnel.yaml');
      const baseConfig = (opts.config !== undefined ? (YAML.parse(fs.readFileSync(opts.config, 'utf8')) ?? {}) : {}) as Record<string, unknown>;
      let configSeq = 0;
      const writeConfig = (ratio: number) => {
        const doc = { ...baseConfig, version: `bench-e2e-sampling-${ratio}-${++configSeq}`, tracing: { ...((baseConfig.tracing as object) ?? {}), sample_ratio: ratio } };
        fs.writeFileSync(`${configFile}.tmp`, YAML.stringify(doc));
        fs.renameSync(`${configFile}.tmp`, configFile);
      };
      writeConfig(1);
      const tArgs = [...firstArgs];
      const at = tArgs.indexOf('--config');
      if (at >= 0) tArgs.splice(at, 2);
      tArgs.push('--config', configFile);
      log(`restarting funnel serve with tracing: 100% sampling, OTLP/HTTP to 127.0.0.1:${receiver.port}`);
      const tServer = await ServerProcess.start(mainJs, tArgs, SERVER_START_TIMEOUT_MS, env);
      running.server = tServer;
      const tCluster = hasWorkers && (firstRun.workers > 1 || childPids(tServer.pid).length > 0);
      if (tCluster) await waitForChildren(tServer.pid, firstRun.workers, WORKERS_UP_TIMEOUT_MS);
      const tAddress = `127.0.0.1:${tServer.banner.port}`;
      const tChannels = channelsFor(firstRun.workers);
      const tGenerators = await LoadGenPool.start(procs, (i) => ({ address: tAddress, channels: tChannels, requests: pool, timeoutMs: opts.timeoutMs, generator: i }));
      running.generators = tGenerators;
      const tSubject: Subject = { server: tServer, workers: firstRun.workers, cluster: tCluster, generators: tGenerators };
      // The traced server gets the history the untraced one had before its Retrieve phases (a
      // Health phase first): measured straight after a restart, the Retrieve rows also paid for
      // the settling of the freshly loaded heap, and the cost read 12% to 23% from run to run.
      for (const p of [
        { phase: 'traced-health-max' as const, method: HEALTH_CHECK_METHOD, rate: undefined },
        { phase: 'traced-max' as const, method: RETRIEVE_METHOD, rate: undefined },
        { phase: 'traced-rate' as const, method: RETRIEVE_METHOD, rate: tracingRate },
      ]) {
        log(`${p.phase}${p.rate !== undefined ? ` at ${p.rate}/s` : ` (${opts.concurrency * firstRun.workers} outstanding)`}: ${opts.warmupSeconds}s warm-up + ${opts.seconds}s`);
        const { row, merged: m } = await runPhase(tSubject, opts, p.phase, p.method, p.rate);
        rows.push(row);
        merged.push(m);
        log(`  ${grouped(row.achieved_qps)} QPS, p50 ${fixed(row.p50_ms ?? undefined, 2)} ms, p99 ${fixed(row.p99_ms ?? undefined, 2)} ms, errors ${describeErrors(m)}`);
        await sleep(PHASE_GAP_MS);
      }
      // Paired rounds on this one process: restarts differ from each other by more than the
      // cost measured (the maximum of a fresh server moved by 15% between runs here), so the
      // verdict compares sampling 0 and 1 on the same heap, alternating which goes first.
      for (let round = 0; round < opts.tracingRounds; round++) {
        const order = round % 2 === 0 ? [0, 1] : [1, 0];
        for (const ratio of order) {
          await tServer.reloadAfter(() => writeConfig(ratio));
          log(`round ${round + 1}/${opts.tracingRounds}: tracing.sample_ratio ${ratio}`);
          for (const p of [
            { phase: ratio === 0 ? ('paired-off-max' as const) : ('paired-on-max' as const), rate: undefined },
            { phase: ratio === 0 ? ('paired-off-rate' as const) : ('paired-on-rate' as const), rate: tracingRate },
          ]) {
            const { row, merged: m } = await runPhase(tSubject, opts, p.phase, RETRIEVE_METHOD, p.rate);
            rows.push(row);
            merged.push(m);
            log(`  ${p.phase}: ${grouped(row.achieved_qps)} QPS, p99 ${fixed(row.p99_ms ?? undefined, 2)} ms, server CPU ${fixed(row.server_cpu_cores ?? undefined, 2)}, errors ${describeErrors(m)}`);
            await sleep(PHASE_GAP_MS);
          }
        }
      }
      const exit = await cleanup();
      fs.rmSync(configDir, { recursive: true, force: true });
      traced = { spans: receiver.received(), exit };
    } finally {
      await receiver.close();
    }
  }

  printTable(rows, merged);
  printOverload(runs);
  printMemory(runs);

  const targets: TargetRow[] = [];
  const adsCount = ads ?? opts.ads;
  const wl = (n: number): string => (hasWorkers ? plural(n, 'worker') : 'one process');

  // CPU per Retrieve, at the closed-loop maximum of the smallest worker count (1 by default).
  const cpuLimits = cpuTargets(adsCount);
  const baseMax = firstRun.retrieveMax;
  targets.push(
    targetRow(
      `CPU per Retrieve, all threads (retrieve-max, ${wl(firstRun.workers)})`,
      baseMax?.cpu_ms_per_call,
      '<=',
      cpuLimits.allThreadsMs,
      `${fixed(baseMax?.cpu_ms_per_call ?? undefined, 3)} ms (${fixed(baseMax?.server_cpu_cores ?? undefined, 2)} cores / ${grouped(baseMax?.achieved_qps)} QPS)`,
      `${cpuLimits.allThreadsMs.toFixed(2)} ms (stated at ${cpuLimits.size})`,
    ),
    targetRow(
      `CPU per Retrieve, JS thread (retrieve-max, ${wl(firstRun.workers)})`,
      baseMax?.js_cpu_ms_per_call,
      '<=',
      cpuLimits.jsThreadMs,
      `${fixed(baseMax?.js_cpu_ms_per_call ?? undefined, 3)} ms (${fixed(baseMax?.js_cpu_cores ?? undefined, 2)} cores)`,
      cpuLimits.jsThreadMs === undefined ? '<= 0.25 ms stated at 1M only' : `${cpuLimits.jsThreadMs.toFixed(2)} ms (stated at 1M)`,
    ),
  );
  // Maximum throughput by worker count.
  for (const run of runs.slice(1)) {
    const q1 = baseMax?.achieved_qps ?? NaN;
    const qn = run.retrieveMax?.achieved_qps ?? NaN;
    const ratio = q1 > 0 ? qn / q1 : null;
    targets.push(
      targetRow(
        `Retrieve max, ${wl(run.workers)} / ${wl(firstRun.workers)}`,
        ratio,
        '>=',
        undefined,
        `${fixed(ratio ?? undefined, 2)} (${grouped(qn)} / ${grouped(q1)} QPS)`,
        `none stated (${cores} cores, shared with ${procs} load generator(s))`,
      ),
    );
  }
  // Overload, every server.
  for (const run of runs) {
    const max = run.retrieveMax?.achieved_qps ?? 0;
    const points: OverloadPoint[] = run.overload.map((r) => ({
      multiple: r.load_multiple ?? NaN,
      offeredQps: r.offered_qps,
      goodputQps: r.achieved_qps,
      p99Ms: r.p99_ms,
      errors: r.errors,
      unsent: r.unsent,
    }));
    targets.push(...overloadTargets(max, points, wl(run.workers)));
    for (const p of points) {
      const offered = offeredMultiple(p, max);
      if (!offered.short) continue;
      const r = run.overload.find((o) => o.load_multiple === p.multiple);
      // Why: the cap held calls back (the server kept them waiting), or the generator could not keep its schedule.
      const why = r?.cap_reached
        ? `the outstanding cap (${r.outstanding}) was reached and held due calls back: the server kept calls waiting`
        : (r?.loadgen_busiest_cpu_share ?? 0) >= 0.9
          ? `a load generator was CPU-bound (${fixed((r?.loadgen_busiest_cpu_share ?? 0) * 100, 0)}% of a core; try --procs)`
          : `the generator sent late (p99 lag ${fixed(r?.send_lag_p99_ms ?? undefined, 1)} ms, busiest generator at ` +
            `${fixed((r?.loadgen_busiest_cpu_share ?? 0) * 100, 0)}% of a core: the cores are shared)`;
      notes.push(
        `overload ${p.multiple}x (${wl(run.workers)}): only ${fixed(offered.multiple, 2)}x was offered (${grouped(p.offeredQps)}/s sent of ${grouped(p.multiple * max)}/s asked): ` +
          `${why}; that row measures ${fixed(offered.multiple, 2)}x, not ${p.multiple}x`,
      );
    }
  }
  // Memory of the workers beyond the first.
  const memoryLimit = memoryTargetApplies(adsCount) ? TARGET_EXTRA_WORKER_MEMORY : undefined;
  const memoryLimitText = memoryLimit === undefined ? '<= 30% stated at 1M only' : '30%';
  let memoryRows = 0;
  for (const run of runs) {
    const workers = run.memory.filter((m) => m.role === 'worker');
    for (const [i, r] of extraWorkerRatios(workers).entries()) {
      memoryRows++;
      targets.push(
        targetRow(
          `private memory of worker ${i + 2} / RSS of worker 1 (${wl(run.workers)})`,
          r.privateShare,
          '<=',
          memoryLimit,
          `${fixed(r.privateShare * 100, 1)}% (RSS ${fixed(r.rssShare * 100, 1)}%; ${mebibytes(workers[i + 1].privateBytes)} / ${mebibytes(workers[0].rss)} MiB)`,
          memoryLimitText,
        ),
      );
    }
  }
  if (memoryRows === 0) {
    targets.push(
      targetRow(
        'memory of each worker beyond the first / RSS of the first',
        null,
        '<=',
        undefined,
        hasWorkers ? 'no server with two or more workers in --workers' : 'funnel serve has no --workers option',
        memoryLimitText,
      ),
    );
  }

  const health = rows.find((r) => r.phase === 'health-max');
  const retrieveMax = baseMax;
  const at1000 = rows.find((r) => r.phase === 'retrieve-rate' && r.target_qps === TARGET_P99_RATE);
  const ratio = health && retrieveMax && health.achieved_qps > 0 ? retrieveMax.achieved_qps / health.achieved_qps : undefined;
  const verdict = (ok: boolean): string => (ok ? 'meets the target' : 'MISSES the target');
  targets.push(
    targetRow(
      `Retrieve max / Health max throughput (${wl(firstRun.workers)})`,
      ratio,
      '>=',
      TARGET_THROUGHPUT_RATIO,
      `${fixed(ratio, 3)} (${grouped(retrieveMax?.achieved_qps)} / ${grouped(health?.achieved_qps)} QPS)`,
    ),
  );
  console.log('Targets');
  console.log(
    `  Retrieve max / Health max throughput: ${ratio === undefined ? '-' : ratio.toFixed(3)} ` +
      `(${grouped(retrieveMax?.achieved_qps)} / ${grouped(health?.achieved_qps)} QPS; target >= ${TARGET_THROUGHPUT_RATIO})` +
      `${ratio === undefined ? '' : `: ${verdict(ratio >= TARGET_THROUGHPUT_RATIO)}`}`,
  );
  if (ratio !== undefined && retrieveMax && retrieveMax.full_qps !== null && retrieveMax.full_qps < retrieveMax.achieved_qps) {
    console.log(
      `    of which ${fixed((retrieveMax.degraded_fraction ?? 0) * 100, 1)}% degraded; counting full answers only: ` +
        `${(retrieveMax.full_qps / (health?.achieved_qps ?? NaN)).toFixed(3)}`,
    );
  }
  if (at1000) {
    const failed = at1000.error_count + at1000.unsent;
    const ok = at1000.p99_ms !== null && at1000.p99_ms <= TARGET_P99_MS && failed === 0;
    console.log(
      `  Retrieve p99 at ${TARGET_P99_RATE}/s: ${fixed(at1000.p99_ms ?? undefined, 2)} ms (target <= ${TARGET_P99_MS} ms, no errors): ${verdict(ok)}` +
        `${failed > 0 ? ` (${failed} errors/unsent)` : ''}` +
        `; ${fixed((at1000.degraded_fraction ?? 0) * 100, 1)}% of answers degraded`,
    );
    const row = targetRow(
      `Retrieve p99 at ${TARGET_P99_RATE}/s, no errors (${wl(firstRun.workers)})`,
      at1000.p99_ms,
      '<=',
      TARGET_P99_MS,
      `${fixed(at1000.p99_ms ?? undefined, 2)} ms${failed > 0 ? `, ${failed} errors/unsent` : ''}`,
      `${TARGET_P99_MS} ms`,
    );
    targets.push(failed > 0 ? { ...row, verdict: 'MISS' } : row);
  } else {
    console.log(`  Retrieve p99 at ${TARGET_P99_RATE}/s: not measured (${TARGET_P99_RATE} is not in --rates)`);
  }
  if (traced) {
    const offMax = rows.find((r) => r.phase === 'retrieve-max');
    const onMax = rows.find((r) => r.phase === 'traced-max');
    const offRate = rows.find((r) => r.phase === 'retrieve-rate' && r.target_qps === tracingRate);
    const onRate = rows.find((r) => r.phase === 'traced-rate');
    const cost = offMax && onMax && offMax.achieved_qps > 0 ? 1 - onMax.achieved_qps / offMax.achieved_qps : undefined;
    console.log(
      `  Tracing at 100% sampling (OTLP/HTTP to loopback; ${traced.spans.requests} export requests, ${mebibytes(traced.spans.bytes)} MiB received): ` +
        `max throughput ${grouped(offMax?.achieved_qps)} -> ${grouped(onMax?.achieved_qps)} QPS, cost ${cost === undefined ? '-' : `${fixed(cost * 100, 1)}%`} ` +
        `(target <= 10%)${cost === undefined ? '' : `: ${verdict(cost <= 0.1)}`}; ` +
        `p99 at ${tracingRate}/s ${fixed(offRate?.p99_ms ?? undefined, 2)} -> ${fixed(onRate?.p99_ms ?? undefined, 2)} ms` +
        (opts.tracingRounds > 0 ? ' (two processes: informative only; the paired rounds below decide)' : ''),
    );
    if (opts.tracingRounds > 0) {
      const pick = (phase: E2eRow['phase']) => rows.filter((r) => r.phase === phase);
      const offQps = median(pick('paired-off-max').map((r) => r.achieved_qps));
      const onQps = median(pick('paired-on-max').map((r) => r.achieved_qps));
      const offCpu = median(pick('paired-off-rate').map((r) => ((r.server_cpu_cores ?? NaN) / Math.max(r.achieved_qps, 1)) * 1000));
      const onCpu = median(pick('paired-on-rate').map((r) => ((r.server_cpu_cores ?? NaN) / Math.max(r.achieved_qps, 1)) * 1000));
      const offP99 = median(pick('paired-off-rate').map((r) => r.p99_ms ?? NaN));
      const onP99 = median(pick('paired-on-rate').map((r) => r.p99_ms ?? NaN));
      const pairedCost = offQps > 0 ? 1 - onQps / offQps : NaN;
      console.log(
        `  Tracing, paired on one server (tracing.sample_ratio 0 vs 1 by reload, ${opts.tracingRounds} rounds, medians): ` +
          `max throughput ${grouped(offQps)} -> ${grouped(onQps)} QPS, cost ${fixed(pairedCost * 100, 1)}% (target <= 10%): ${verdict(pairedCost <= 0.1)}; ` +
          `at ${tracingRate}/s server CPU ${fixed(offCpu, 2)} -> ${fixed(onCpu, 2)} ms per call (${fixed((onCpu / offCpu - 1) * 100, 1)}%), ` +
          `p99 ${fixed(offP99, 2)} -> ${fixed(onP99, 2)} ms`,
      );
      targets.push(
        targetRow(
          `tracing at 100% sampling: max throughput cost (paired, ${opts.tracingRounds} rounds, medians)`,
          pairedCost,
          '<=',
          0.1,
          `${fixed(pairedCost * 100, 1)}% (${grouped(offQps)} -> ${grouped(onQps)} QPS)`,
          '10%',
        ),
      );
    } else {
      targets.push(
        targetRow(
          'tracing at 100% sampling: max throughput cost (two processes)',
          cost,
          '<=',
          0.1,
          `${fixed((cost ?? NaN) * 100, 1)}% (${grouped(offMax?.achieved_qps)} -> ${grouped(onMax?.achieved_qps)} QPS)`,
          '10%',
        ),
      );
    }
  }
  console.log(
    `Server memory${hasWorkers ? ` (${wl(firstRun.workers)}, summed over its processes)` : ''}: RSS ${mebibytes(memLoaded.rss)} MiB once loaded, ${mebibytes(memEnd.rss)} MiB at the end, ` +
      `${mebibytes(Math.max(peakRssSeen, memEnd.rss ?? 0))} MiB highest seen between phases, peak (VmHWM) ${mebibytes(memEnd.peakRss)} MiB`,
  );
  if (runs.length > 1 || hasWorkers) {
    console.log(
      `Retrieve maximum by worker count: ${runs.map((r) => `${wl(r.workers)} ${grouped(r.retrieveMax?.achieved_qps)} QPS`).join(', ')}` +
        (runs.length > 1 && (baseMax?.achieved_qps ?? 0) > 0
          ? ` (${runs.slice(1).map((r) => `${r.workers}/${firstRun.workers}: ${fixed((r.retrieveMax?.achieved_qps ?? NaN) / baseMax!.achieved_qps, 2)}`).join(', ')}; ` +
            `${cores} cores shared with ${procs} load generator(s))`
          : ''),
    );
  }
  if (warm) console.log(`Stages of request 0 (debug, warm, idle server): ${describeStages(warm)}`);
  if (!hasWorkers && opts.workers.some((n) => n !== 1)) {
    notes.push(`funnel serve has no --workers option yet: one server process measured; --workers ${opts.workers.join(',')} is waiting for it`);
  }
  for (const r of rows) {
    const label = `${r.phase}${r.load_multiple !== null ? ` ${r.load_multiple}x` : r.target_qps ? ` ${r.target_qps}/s` : ''}${hasWorkers ? ` (${wl(r.workers)})` : ''}`;
    if (r.loadgen_busiest_cpu_share >= 0.9) {
      notes.push(`${label}: a load generator used ${fixed(r.loadgen_busiest_cpu_share * 100, 0)}% of a core; the client may have limited this row (try --procs)`);
    }
    if (r.cap_reached) {
      notes.push(
        `${label}: ${r.outstanding} calls were outstanding (the server fell behind): due requests waited ` +
          `for a free slot (p99 send lag ${fixed(r.send_lag_p99_ms ?? undefined, 1)} ms), and that wait is inside the latencies`,
      );
    } else if (r.send_lag_p99_ms !== null && r.send_lag_p99_ms > 5) {
      notes.push(`${label}: the generator itself sent late (p99 lag ${fixed(r.send_lag_p99_ms, 1)} ms); that lateness is inside the latencies`);
    }
    if (r.phase === 'retrieve-max' && r.worker_cpu_cores.length > 1) {
      const lo = Math.min(...r.worker_cpu_cores);
      const hi = Math.max(...r.worker_cpu_cores);
      if (lo < 0.5 * hi) notes.push(`${label}: CPU per worker ${r.worker_cpu_cores.join(', ')} cores: connections were not spread evenly`);
    }
    if (Object.keys(r.degraded_stages).length > 0) {
      const stages = Object.entries(r.degraded_stages).map(([k, v]) => `${k} ${fixed(v * 100, 1)}%`).join(', ');
      notes.push(`${label}: degraded answers named ${stages}`);
    }
    if (r.first_error !== undefined) notes.push(`${label}: first error ${r.first_error}`);
  }
  if (cores < procs + 2) {
    notes.push(`only ${cores} cores for the server and ${procs} load generator(s): they compete for CPU, so these are not the server's own limits`);
  }
  for (const run of runs) {
    const who = hasWorkers ? `the server with ${plural(run.workers, 'worker')}` : 'the server';
    if (run.exit !== undefined && !/code 0 /.test(run.exit)) notes.push(`${who} ${run.exit} (expected: drain and exit 0)`);
    if (run.problems.size > 0) notes.push(`${who} logged: ${[...run.problems].map(([msg, n]) => `${msg} (x${n})`).join('; ')}`);
  }
  for (const n of notes) console.log(`note: ${n}`);
  console.log('');

  printTargets(targets);

  for (const r of rows) console.log(JSON.stringify(r));
  for (const run of runs) {
    for (const m of run.memory) {
      console.log(
        JSON.stringify({
          phase: 'memory',
          workers: run.workers,
          pid: m.pid,
          role: m.role,
          rss_mb: round(m.rss / 2 ** 20, 1),
          pss_mb: round(m.pss / 2 ** 20, 1),
          private_mb: round(m.privateBytes / 2 ** 20, 1),
        }),
      );
    }
  }
  for (const t of targets) console.log(JSON.stringify({ phase: 'target', name: t.name, value: t.value, limit: t.limit, verdict: t.verdict, measured: t.measured }));
  console.log(
    JSON.stringify({
      phase: 'summary',
      ads: ads ?? null,
      dim,
      cores,
      workers_option: hasWorkers,
      workers: runs.map((r) => r.workers),
      retrieve_max_qps_by_workers: Object.fromEntries(runs.map((r) => [String(r.workers), r.retrieveMax?.achieved_qps ?? null])),
      cpu_ms_per_retrieve: baseMax?.cpu_ms_per_call ?? null,
      js_cpu_ms_per_retrieve: baseMax?.js_cpu_ms_per_call ?? null,
      retrieve_over_health_max: ratio === undefined ? null : round(ratio, 4),
      target_retrieve_over_health_max: TARGET_THROUGHPUT_RATIO,
      p99_ms_at_1000: at1000?.p99_ms ?? null,
      target_p99_ms_at_1000: TARGET_P99_MS,
      deadline_ms: opts.timeoutMs,
      targets_missed: targets.filter((t) => t.verdict === 'MISS').length,
      server_load_s: round(firstRun.loadSeconds, 2),
      server_exit: firstRun.exit ?? null,
      server_rss_mb_loaded: memLoaded.rss === undefined ? null : round(memLoaded.rss / 2 ** 20, 1),
      server_rss_mb_end: memEnd.rss === undefined ? null : round(memEnd.rss / 2 ** 20, 1),
      server_peak_rss_mb: memEnd.peakRss === undefined ? null : round(memEnd.peakRss / 2 ** 20, 1),
      load_generators: procs,
      channels_per_generator: runs.map((r) => channelsFor(r.workers)),
    }),
  );
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  async (err: unknown) => {
    // The message says what failed (a server's stderr included); the stack only with BENCH_DEBUG set.
    if (interrupted) return;
    const e = err as Error;
    process.stderr.write(`bench:e2e: ${process.env.BENCH_DEBUG ? e?.stack : e?.message ?? String(err)}\n`);
    await cleanup().catch(() => {});
    process.exitCode = 1;
  },
);
