/**
 * `npm run bench:e2e`: the whole service under load. Serves a generated catalog (1M ads x 64-d by
 * default, cached under bench/.cache) with `funnel serve` as a child process and drives it over
 * gRPC from separate load generator processes (bench/lib/loadgen.ts) in three kinds of phase:
 * closed-loop maximum throughput of grpc.health.v1.Health/Check (the transport's ceiling), the
 * same for Retrieve, then Retrieve at fixed rates (open loop, latency from each request's ideal
 * send time). Prints a table, the issue's two ratios (Retrieve/Health maximum throughput >= 0.5,
 * p99 at 1000/s <= 25 ms), the server's memory, then one JSON line per row. Progress goes to
 * stderr, results to stdout. The server and the generators are stopped on exit, error or signal.
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
import { HEALTH_CHECK_METHOD, PhaseSpec, RETRIEVE_METHOD } from './lib/loadgen';
import { LoadGenPool, MergedResult, mergeResults } from './lib/loadgen-pool';
import { processCpuSeconds, processMemory } from './lib/proc';
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
/** Delay between telling the generators to start a phase and its start (so all start together). */
const PHASE_START_DELAY_MS = 300;
/** Idle time between phases. */
const PHASE_GAP_MS = 500;

const repoRoot = path.resolve(__dirname, '..', '..');
const mainJs = path.join(repoRoot, 'dist', 'src', 'cli', 'main.js');
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
    | 'paired-on-rate';
  method: string;
  /** Requests per second asked for; null for the closed-loop (maximum throughput) phases. */
  target_qps: number | null;
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
  server_cpu_cores: number | null;
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

/** Stops the generators, then the server (SIGTERM, SIGKILL after a grace period); says how the server exited. */
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

async function cleanup(): Promise<string | undefined> {
  const { server, generators } = running;
  running.generators = undefined;
  running.server = undefined;
  if (generators) await generators.close();
  if (!server) return undefined;
  const t0 = Date.now();
  const exit = await server.stop(SERVER_STOP_GRACE_MS);
  const how = exit.killed
    ? `did not exit within ${SERVER_STOP_GRACE_MS / 1000}s of SIGTERM: killed`
    : `exited ${exit.signal ? `on ${exit.signal}` : `with code ${exit.code}`} ${((Date.now() - t0) / 1000).toFixed(1)}s after SIGTERM`;
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

/** A phase on every generator; CPU of the server read at the measured window's start and end. */
async function runPhase(
  generators: LoadGenPool,
  server: ServerProcess,
  opts: E2eBenchOptions,
  phase: E2eRow['phase'],
  method: string,
  rate: number | undefined,
): Promise<{ row: E2eRow; merged: MergedResult }> {
  const n = generators.size;
  const outstanding = rate === undefined ? opts.concurrency : opts.maxOutstanding;
  const shares = splitEven(outstanding, n).map((c) => Math.max(1, c));
  const startAtEpochMs = Date.now() + PHASE_START_DELAY_MS;
  let cpuStart: number | undefined;
  let cpuEnd: number | undefined;
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
      if (what === 'window-start') cpuStart = processCpuSeconds(server.pid);
      else cpuEnd = processCpuSeconds(server.pid);
    },
  );
  const r = mergeResults(results);
  const errorCount = Object.values(r.errors).reduce((a, b) => a + b, 0);
  const retrieve = method === RETRIEVE_METHOD;
  const row: E2eRow = {
    phase,
    method,
    target_qps: rate ?? null,
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
    server_cpu_cores: cpuStart !== undefined && cpuEnd !== undefined ? round((cpuEnd - cpuStart) / r.windowSeconds, 2) : null,
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

function printHeader(opts: E2eBenchOptions, dataLabel: string, server: ServerProcess, procs: number, serverArgs: string[]): void {
  const cpus = os.cpus();
  const b = server.banner;
  console.log('# End-to-end benchmark (funnel serve over gRPC)');
  console.log(`data:     ${dataLabel}`);
  console.log(`server:   node dist/src/cli/main.js serve ${serverArgs.join(' ')} (pid ${server.pid}): ${b.ads ?? '?'} ads, dim ${b.dim ?? '?'}`);
  console.log(
    `load:     ${procs} load generator process(es) x ${opts.channels} channels; closed loop ${opts.concurrency} outstanding; ` +
      `open loop cap ${opts.maxOutstanding}; ${opts.seconds}s measured after ${opts.warmupSeconds}s warm-up per phase; ` +
      `num_results ${opts.numResults}; pool of ${opts.pool} requests; deadline ${opts.timeoutMs} ms`,
  );
  console.log(
    `machine:  ${cpus[0]?.model ?? 'unknown CPU'}, ${os.availableParallelism()} logical cores, ` +
      `${(os.totalmem() / 1024 ** 3).toFixed(1)} GiB RAM; node ${process.version}`,
  );
  console.log(`load avg: ${os.loadavg().map((x) => x.toFixed(2)).join(' ')} (1/5/15 min) at start`);
}

function printTable(rows: readonly E2eRow[], merged: readonly MergedResult[]): void {
  const table = rows.map((r, i) => [
    r.phase,
    r.target_qps === null ? 'max' : grouped(r.target_qps),
    grouped(r.achieved_qps),
    fixed(r.p50_ms ?? undefined, 2),
    fixed(r.p95_ms ?? undefined, 2),
    fixed(r.p99_ms ?? undefined, 2),
    fixed(r.max_ms ?? undefined, 2),
    describeErrors(merged[i]),
    fixed(r.server_cpu_cores ?? undefined, 2),
    fixed(r.loadgen_cpu_cores, 2),
    r.send_lag_p99_ms === null ? '-' : fixed(r.send_lag_p99_ms, 2),
    r.mean_candidates === null ? '-' : fixed(r.mean_candidates, 1),
    r.degraded_fraction === null ? '-' : `${fixed(r.degraded_fraction * 100, 1)}%`,
  ]);
  console.log(
    formatTable(
      'Phases: "max" = closed loop (fixed outstanding calls, latency from send); a rate = open loop ' +
        '(latency from the ideal send time); QPS = calls answered OK per second of the window; ' +
        'CPU in cores over the window; lag = the generator\'s own send lateness, p99',
      [
        { header: 'phase', align: 'left' },
        { header: 'target/s' },
        { header: 'achieved QPS' },
        { header: 'p50 ms' },
        { header: 'p95 ms' },
        { header: 'p99 ms' },
        { header: 'max ms' },
        { header: 'errors', align: 'left' },
        { header: 'server CPU' },
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
  const procs = Math.min(opts.procs ?? defaultProcs(os.availableParallelism()), opts.concurrency);

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

  const serverArgs = ['--data', dataDir, '--port', '0', '--host', '127.0.0.1'];
  if (opts.config !== undefined) serverArgs.push('--config', path.resolve(opts.config));
  // Metrics stay on, as in production, on a free port (the default 9464 may be taken on a shared machine).
  if (serveAccepts('--metrics-port')) serverArgs.push('--metrics-port', String(await freePort()));
  log(`starting funnel serve on ${dataDir}`);
  const serverStarted = Date.now();
  const server = await ServerProcess.start(mainJs, serverArgs, SERVER_START_TIMEOUT_MS);
  running.server = server;
  const loadSeconds = (Date.now() - serverStarted) / 1000;
  const memLoaded = processMemory(server.pid);
  const address = `127.0.0.1:${server.banner.port}`;
  log(`serving on ${address} after ${loadSeconds.toFixed(1)}s (${server.banner.ads ?? '?'} ads)`);

  const dim = server.banner.dim ?? opts.dim;
  log(`building ${opts.pool} requests (dim ${dim})`);
  // Embeddings come from the first rows of the generated catalog (the first rows do not depend on its size).
  const sourceRows = opts.data !== undefined ? 8 * opts.pool : Math.min(opts.ads, 8 * opts.pool);
  const pool = buildRequestPool({ size: opts.pool, dim, seed: opts.seed, sourceRows, numResults: opts.numResults });

  printHeader(opts, dataLabel, server, procs, serverArgs);
  console.log(`startup:  serving line after ${loadSeconds.toFixed(1)}s; server RSS ${mebibytes(memLoaded.rss)} MiB once loaded`);
  for (const line of await sanityCheck(address, pool, opts.timeoutMs)) console.log(line);
  console.log('');

  log(`forking ${procs} load generator(s)`);
  const generators = await LoadGenPool.start(procs, (i) => ({
    address,
    channels: opts.channels,
    requests: pool,
    timeoutMs: opts.timeoutMs,
    generator: i,
  }));
  running.generators = generators;

  const rows: E2eRow[] = [];
  const merged: MergedResult[] = [];
  let peakRssSeen = memLoaded.rss ?? 0;
  const phases: { phase: E2eRow['phase']; method: string; rate?: number }[] = [
    { phase: 'health-max', method: HEALTH_CHECK_METHOD },
    { phase: 'retrieve-max', method: RETRIEVE_METHOD },
    ...opts.rates.map((rate) => ({ phase: 'retrieve-rate' as const, method: RETRIEVE_METHOD, rate })),
  ];
  for (const p of phases) {
    log(`${p.phase}${p.rate !== undefined ? ` at ${p.rate}/s` : ` (${opts.concurrency} outstanding)`}: ${opts.warmupSeconds}s warm-up + ${opts.seconds}s`);
    const { row, merged: m } = await runPhase(generators, server, opts, p.phase, p.method, p.rate);
    rows.push(row);
    merged.push(m);
    peakRssSeen = Math.max(peakRssSeen, processMemory(server.pid).rss ?? 0);
    log(
      `  ${grouped(row.achieved_qps)} QPS, p50 ${fixed(row.p50_ms ?? undefined, 2)} ms, p99 ${fixed(row.p99_ms ?? undefined, 2)} ms, ` +
        `errors ${describeErrors(m)}`,
    );
    if (server.exitStatus !== undefined) throw new Error(`the server exited during ${p.phase}: ${server.stderrTail.join('\n')}`);
    await sleep(PHASE_GAP_MS);
  }
  const memEnd = processMemory(server.pid);
  await generators.close();
  running.generators = undefined;
  const warm = (await retrieveDecoded(address, [debugRequest(pool), debugRequest(pool), debugRequest(pool)], opts.timeoutMs))[2];
  const serverExit = await cleanup();

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
      const tArgs = [...serverArgs];
      const at = tArgs.indexOf('--config');
      if (at >= 0) tArgs.splice(at, 2);
      tArgs.push('--config', configFile);
      log(`restarting funnel serve with tracing: 100% sampling, OTLP/HTTP to 127.0.0.1:${receiver.port}`);
      const tServer = await ServerProcess.start(mainJs, tArgs, SERVER_START_TIMEOUT_MS, env);
      running.server = tServer;
      const tAddress = `127.0.0.1:${tServer.banner.port}`;
      const tGenerators = await LoadGenPool.start(procs, (i) => ({ address: tAddress, channels: opts.channels, requests: pool, timeoutMs: opts.timeoutMs, generator: i }));
      running.generators = tGenerators;
      // The traced server gets the history the untraced one had before its Retrieve phases (a
      // Health phase first): measured straight after a restart, the Retrieve rows also paid for
      // the settling of the freshly loaded heap, and the cost read 12% to 23% from run to run.
      for (const p of [
        { phase: 'traced-health-max' as const, method: HEALTH_CHECK_METHOD, rate: undefined },
        { phase: 'traced-max' as const, method: RETRIEVE_METHOD, rate: undefined },
        { phase: 'traced-rate' as const, method: RETRIEVE_METHOD, rate: tracingRate },
      ]) {
        log(`${p.phase}${p.rate !== undefined ? ` at ${p.rate}/s` : ` (${opts.concurrency} outstanding)`}: ${opts.warmupSeconds}s warm-up + ${opts.seconds}s`);
        const { row, merged: m } = await runPhase(tGenerators, tServer, opts, p.phase, p.method, p.rate);
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
            const { row, merged: m } = await runPhase(tGenerators, tServer, opts, p.phase, RETRIEVE_METHOD, p.rate);
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

  const health = rows.find((r) => r.phase === 'health-max');
  const retrieveMax = rows.find((r) => r.phase === 'retrieve-max');
  const at1000 = rows.find((r) => r.phase === 'retrieve-rate' && r.target_qps === TARGET_P99_RATE);
  const ratio = health && retrieveMax && health.achieved_qps > 0 ? retrieveMax.achieved_qps / health.achieved_qps : undefined;
  const verdict = (ok: boolean): string => (ok ? 'meets the target' : 'MISSES the target');
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
    const ok = at1000.p99_ms !== null && at1000.p99_ms <= TARGET_P99_MS && at1000.error_count + at1000.unsent === 0;
    console.log(
      `  Retrieve p99 at ${TARGET_P99_RATE}/s: ${fixed(at1000.p99_ms ?? undefined, 2)} ms (target <= ${TARGET_P99_MS} ms, no errors): ${verdict(ok)}` +
        `${at1000.error_count + at1000.unsent > 0 ? ` (${at1000.error_count + at1000.unsent} errors/unsent)` : ''}` +
        `; ${fixed((at1000.degraded_fraction ?? 0) * 100, 1)}% of answers degraded`,
    );
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
      const cost = offQps > 0 ? 1 - onQps / offQps : NaN;
      console.log(
        `  Tracing, paired on one server (tracing.sample_ratio 0 vs 1 by reload, ${opts.tracingRounds} rounds, medians): ` +
          `max throughput ${grouped(offQps)} -> ${grouped(onQps)} QPS, cost ${fixed(cost * 100, 1)}% (target <= 10%): ${verdict(cost <= 0.1)}; ` +
          `at ${tracingRate}/s server CPU ${fixed(offCpu, 2)} -> ${fixed(onCpu, 2)} ms per call (${fixed((onCpu / offCpu - 1) * 100, 1)}%), ` +
          `p99 ${fixed(offP99, 2)} -> ${fixed(onP99, 2)} ms`,
      );
    }
  }
  console.log(
    `Server memory: RSS ${mebibytes(memLoaded.rss)} MiB once loaded, ${mebibytes(memEnd.rss)} MiB at the end, ` +
      `${mebibytes(Math.max(peakRssSeen, memEnd.rss ?? 0))} MiB highest seen between phases, peak (VmHWM) ${mebibytes(memEnd.peakRss)} MiB`,
  );
  console.log(`Stages of request 0 (debug, warm, idle server): ${describeStages(warm)}`);
  const notes: string[] = [];
  for (const r of rows) {
    if (r.loadgen_busiest_cpu_share >= 0.9) {
      notes.push(`${r.phase}${r.target_qps ? ` ${r.target_qps}/s` : ''}: a load generator used ${fixed(r.loadgen_busiest_cpu_share * 100, 0)}% of a core; the client may have limited this row (try --procs)`);
    }
    if (r.cap_reached) {
      notes.push(
        `${r.phase} ${r.target_qps}/s: ${opts.maxOutstanding} calls were outstanding (the server fell behind): due requests waited ` +
          `for a free slot (p99 send lag ${fixed(r.send_lag_p99_ms ?? undefined, 1)} ms), and that wait is inside the latencies`,
      );
    } else if (r.send_lag_p99_ms !== null && r.send_lag_p99_ms > 5) {
      notes.push(`${r.phase} ${r.target_qps}/s: the generator itself sent late (p99 lag ${fixed(r.send_lag_p99_ms, 1)} ms); that lateness is inside the latencies`);
    }
    if (Object.keys(r.degraded_stages).length > 0) {
      const stages = Object.entries(r.degraded_stages).map(([k, v]) => `${k} ${fixed(v * 100, 1)}%`).join(', ');
      notes.push(`${r.phase}${r.target_qps ? ` ${r.target_qps}/s` : ''}: degraded answers named ${stages}`);
    }
    if (r.first_error !== undefined) notes.push(`${r.phase}${r.target_qps ? ` ${r.target_qps}/s` : ''}: first error ${r.first_error}`);
  }
  if (os.availableParallelism() < procs + 2) {
    notes.push(`only ${os.availableParallelism()} cores for the server and ${procs} load generator(s): they compete for CPU, so these are not the server's own limits`);
  }
  if (serverExit !== undefined && !/code 0 /.test(serverExit)) notes.push(`the server ${serverExit} (expected: drain and exit 0)`);
  if (server.problems.size > 0) {
    notes.push(`the server logged: ${[...server.problems].map(([msg, n]) => `${msg} (x${n})`).join('; ')}`);
  }
  for (const n of notes) console.log(`note: ${n}`);
  console.log('');

  for (const r of rows) console.log(JSON.stringify(r));
  console.log(
    JSON.stringify({
      phase: 'summary',
      ads: server.banner.ads ?? null,
      dim,
      retrieve_over_health_max: ratio === undefined ? null : round(ratio, 4),
      target_retrieve_over_health_max: TARGET_THROUGHPUT_RATIO,
      p99_ms_at_1000: at1000?.p99_ms ?? null,
      target_p99_ms_at_1000: TARGET_P99_MS,
      server_load_s: round(loadSeconds, 2),
      server_exit: serverExit ?? null,
      server_rss_mb_loaded: memLoaded.rss === undefined ? null : round(memLoaded.rss / 2 ** 20, 1),
      server_rss_mb_end: memEnd.rss === undefined ? null : round(memEnd.rss / 2 ** 20, 1),
      server_peak_rss_mb: memEnd.peakRss === undefined ? null : round(memEnd.peakRss / 2 ** 20, 1),
      load_generators: procs,
      channels_per_generator: opts.channels,
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
