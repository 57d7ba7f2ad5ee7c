/**
 * `npm run bench:cluster`: one node against a sharded cluster, on one machine, in one run, over the
 * same generated catalog (100k ads x 64-d by default, written once to a temporary directory) and
 * the same list of Retrieve requests. The node: `funnel ingest --data` then `funnel serve
 * --workers 1`. The cluster: a nats-server with JetStream, `funnel ingest --nats --shards N`,
 * one `funnel serve --nats --shard I/N` replica per shard bootstrapped from the stream into an
 * empty directory (started one after another, each timed from spawn to its serving line), and
 * `funnel root` in front. First the answers to the first requests are compared (overlap@N of the
 * cluster's ad_ids with the node's), then each system gets the same phases from a separate load
 * generator process (bench/lib/loadgen.ts): closed-loop maximum throughput, then fixed rates.
 * CPU per OK request of every process is read from /proc over each measured window. Prints the
 * tables, then one JSON line per row. Progress goes to stderr, results to stdout. Every child
 * process is stopped on exit, error or signal, and the temporary directory removed (unless --keep).
 */
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { protoRoot } from '../src/grpc/proto';
import { CLUSTER_USAGE, ClusterBenchOptions, parseClusterArgs } from './lib/cluster-args';
import {
  ClusterRow,
  cpuMsPerRequest,
  describeFailures,
  meanOverlap,
  parsePublishTimes,
  parseReplicaStartup,
  parseRootBanner,
  ReplicaStartup,
  tableCells,
  tableHeaders,
  withRatios,
} from './lib/cluster-report';
import { buildRequestPool, runIngest, writeCatalogJsonl } from './lib/e2e-data';
import { PhaseSpec, RETRIEVE_METHOD } from './lib/loadgen';
import { LoadGenPool, MergedResult, mergeResults } from './lib/loadgen-pool';
import { findNatsServer, NatsServer } from './lib/nats-server';
import { processMemory, processTree, treeCpu, treeMemory } from './lib/proc';
import { splitEven } from './lib/schedule';
import { ServerProcess } from './lib/server-process';
import { fixed, formatTable, grouped, mebibytes, round } from './lib/table';
import { progressLog } from './lib/timing';

/** Longest wait for a server to load or bootstrap its data and print its serving line. */
const SERVER_START_TIMEOUT_MS = 20 * 60_000;
/** SIGTERM grace before SIGKILL. */
const SERVER_STOP_GRACE_MS = 30_000;
/** Delay between telling the generators to start a phase and its start (so all start together). */
const PHASE_START_DELAY_MS = 300;
/** Idle time between phases. */
const PHASE_GAP_MS = 500;
/** The second, shorter N of overlap@N. */
const OVERLAP_TOP = 10;

const repoRoot = path.resolve(__dirname, '..', '..');
const mainJs = path.join(repoRoot, 'dist', 'src', 'cli', 'main.js');
const log = progressLog();

/** Everything started, so that it is stopped however the run ends (`building` kills a running ingest or publish). */
const running: {
  nats?: NatsServer;
  /** By name (`node`, `shard-0`, ..., `root`), in start order. */
  servers: Map<string, ServerProcess>;
  generators?: LoadGenPool;
  tmp?: string;
  keep: boolean;
} = { servers: new Map(), keep: false };
const building = new AbortController();

function sleep(msDelay: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, msDelay));
}

function ms(us: number): number | null {
  return Number.isFinite(us) ? round(us / 1000, 3) : null;
}

function roundOrNull(v: number | null | undefined, digits: number): number | null {
  return v === null || v === undefined || !Number.isFinite(v) ? null : round(v, digits);
}

/** How a stopped server exited, in words. */
function describeExit(exit: { code: number | null; signal: NodeJS.Signals | null; killed: boolean; leftovers: number }): string {
  return (
    (exit.killed ? `did not exit within ${SERVER_STOP_GRACE_MS / 1000}s of SIGTERM: killed` : `exited ${exit.signal ? `on ${exit.signal}` : `with code ${exit.code}`}`) +
    (exit.leftovers > 0 ? `, leaving ${exit.leftovers} child process(es): killed` : '')
  );
}

/** Stops one server (SIGTERM, SIGKILL after the grace) and forgets it; says how it exited. */
async function stopServer(name: string): Promise<string | undefined> {
  const server = running.servers.get(name);
  if (!server) return undefined;
  running.servers.delete(name);
  const how = describeExit(await server.stop(SERVER_STOP_GRACE_MS));
  log(`${name} ${how}`);
  return how;
}

/** Stops the generators, the root, the replicas and the node, then nats-server; removes the temporary directory unless kept. Returns how each server exited. */
async function cleanup(): Promise<Map<string, string>> {
  const exits = new Map<string, string>();
  const generators = running.generators;
  running.generators = undefined;
  if (generators) await generators.close();
  // The root first, so that it does not see its shards go away under load.
  if (running.servers.has('root')) exits.set('root', (await stopServer('root'))!);
  const rest = [...running.servers.keys()];
  const hows = await Promise.all(rest.map((name) => stopServer(name)));
  rest.forEach((name, i) => exits.set(name, hows[i]!));
  const nats = running.nats;
  running.nats = undefined;
  if (nats) {
    const { killed } = await nats.stop();
    const how = killed ? 'did not exit within 5s of SIGINT: killed' : `exited ${nats.exit?.signal ? `on ${nats.exit.signal}` : `with code ${nats.exit?.code}`}`;
    exits.set('nats-server', how);
    log(`nats-server ${how}`);
  }
  removeTmp();
  return exits;
}

function removeTmp(): void {
  const tmp = running.tmp;
  if (tmp === undefined) return;
  running.tmp = undefined;
  if (running.keep) log(`kept ${tmp}`);
  else fs.rmSync(tmp, { recursive: true, force: true });
}

process.on('exit', () => {
  building.abort();
  running.generators?.killNow();
  for (const s of running.servers.values()) s.killNow();
  running.nats?.killNow();
  // A server still starting (a replica bootstrapping) is not in `running` yet: every descendant left goes too.
  for (const pid of processTree(process.pid).slice(1).reverse()) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Gone already.
    }
  }
  try {
    removeTmp();
  } catch {
    // Exiting anyway.
  }
});
let interrupted = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    interrupted = true;
    building.abort();
    log(`${signal}: stopping every process`);
    cleanup()
      .catch(() => undefined)
      .finally(() => process.exit(signal === 'SIGINT' ? 130 : 143));
  });
}

/** Runs `funnel ingest --catalog F --nats URL --shards N` (its stdout kept and copied to our stderr); resolves with its wall-clock seconds and stdout. */
async function publishCatalog(catalog: string, natsUrl: string, shards: number, signal: AbortSignal): Promise<{ seconds: number; stdout: string }> {
  const t0 = performance.now();
  const child = spawn(process.execPath, [mainJs, 'ingest', '--catalog', catalog, '--nats', natsUrl, '--shards', String(shards)], {
    stdio: ['ignore', 'pipe', 'inherit'],
    signal,
    killSignal: 'SIGKILL',
  });
  let stdout = '';
  child.stdout!.on('data', (chunk: Buffer) => {
    stdout += chunk.toString('utf8');
    process.stderr.write(chunk);
  });
  const [code, sig] = (await Promise.race([once(child, 'exit'), once(child, 'error').then(([e]) => Promise.reject(e))])) as [number | null, NodeJS.Signals | null];
  if (code !== 0) throw new Error(`funnel ingest --nats failed (${sig ?? `exit code ${code}`})`);
  return { seconds: (performance.now() - t0) / 1000, stdout };
}

/** One Retrieve answer's ad_ids, best first, or why the call failed. */
type Answer = { ids: string[] } | { error: string };

/** Calls Retrieve with each buffer in turn (one at a time) and keeps each answer's ad_ids. */
async function retrieveIds(address: string, requests: readonly Buffer[], timeoutMs: number): Promise<Answer[]> {
  const responseType = protoRoot().lookupType('funnel.v1.RetrieveResponse');
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  const call = (buf: Buffer): Promise<Answer> =>
    new Promise((resolve) =>
      client.makeUnaryRequest<Buffer, { candidates?: { ad_id?: string }[] }>(
        RETRIEVE_METHOD,
        (b) => b,
        (b) => responseType.toObject(responseType.decode(b), { arrays: true, defaults: true }) as { candidates?: { ad_id?: string }[] },
        buf,
        { deadline: Date.now() + timeoutMs },
        (err, res) => resolve(err ? { error: `${grpc.status[err.code] ?? err.code}: ${err.details}` } : { ids: (res?.candidates ?? []).map((c) => c.ad_id ?? '') }),
      ),
    );
  try {
    const out: Answer[] = [];
    for (const r of requests) out.push(await call(r));
    return out;
  } finally {
    client.close();
  }
}

/** CPU seconds so far of each named process and its descendants (all threads, utime+stime); undefined once gone. */
function readCpu(pids: ReadonlyMap<string, number>): Map<string, number | undefined> {
  const out = new Map<string, number | undefined>();
  for (const [name, pid] of pids) {
    const tree = treeCpu(pid);
    out.set(name, tree.size === 0 ? undefined : [...tree.values()].reduce((a, c) => a + c.allSeconds, 0));
  }
  return out;
}

/** Resident memory of a process (and its descendants) now and its peak, bytes. */
interface MemoryReading {
  rss?: number;
  peakRss?: number;
}

/** One process of either system, as printed in the startup and memory table. */
interface ProcessRecord {
  name: string;
  pid: number;
  /** Seconds from spawn to the serving line. */
  readySeconds?: number;
  detail: string;
  ready: MemoryReading;
  afterLoad: MemoryReading;
}

/** The system under load: where the generators send, and the processes whose CPU is read. */
interface Subject {
  system: ClusterRow['system'];
  generators: LoadGenPool;
  /** Serving processes by name: `node`, or `root`, `shard-0`, ... */
  pids: Map<string, number>;
  natsPid?: number;
}

/** A phase on every generator; CPU of every process of the subject read at the measured window's start and end. */
async function runPhase(subject: Subject, opts: ClusterBenchOptions, rate: number | undefined): Promise<{ row: ClusterRow; merged: MergedResult }> {
  const { generators } = subject;
  const n = generators.size;
  const outstanding = rate === undefined ? opts.concurrency : opts.maxOutstanding;
  const shares = splitEven(outstanding, n).map((c) => Math.max(1, c));
  const startAtEpochMs = Date.now() + PHASE_START_DELAY_MS;
  const watched = new Map(subject.pids);
  if (subject.natsPid !== undefined) watched.set('nats-server', subject.natsPid);
  let cpuStart: Map<string, number | undefined> | undefined;
  let cpuEnd: Map<string, number | undefined> | undefined;
  const results = await generators.run(
    (i): PhaseSpec => ({
      method: RETRIEVE_METHOD,
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
      if (what === 'window-start') cpuStart = readCpu(watched);
      else cpuEnd = readCpu(watched);
    },
  );
  const r = mergeResults(results);
  const delta = (name: string): number | undefined => {
    const a = cpuStart?.get(name);
    const b = cpuEnd?.get(name);
    return a === undefined || b === undefined ? undefined : b - a;
  };
  const cpuMs: Record<string, number | null> = {};
  const cpuCores: Record<string, number | null> = {};
  for (const name of subject.pids.keys()) {
    cpuMs[name] = roundOrNull(cpuMsPerRequest(delta(name), r.ok), 4);
    const d = delta(name);
    cpuCores[name] = d === undefined ? null : round(d / r.windowSeconds, 3);
  }
  const clusterSeconds = subject.system === 'cluster' ? [...subject.pids.keys()].map(delta) : [];
  const clusterSum = clusterSeconds.some((s) => s === undefined) ? undefined : clusterSeconds.reduce<number>((a, s) => a + (s ?? 0), 0);
  const natsDelta = subject.natsPid === undefined ? undefined : delta('nats-server');
  const failed = Object.values(r.errors).reduce((a, b) => a + b, 0);
  const row: ClusterRow = {
    system: subject.system,
    phase: rate === undefined ? 'max' : 'rate',
    target_qps: rate === undefined ? null : round(rate, 1),
    outstanding,
    offered_per_s: round(r.sentInWindow / r.windowSeconds, 1),
    ok_per_s: round(r.ok / r.windowSeconds, 1),
    ok: r.ok,
    p50_ms: ms(r.latency.quantileUs(0.5)),
    p95_ms: ms(r.latency.quantileUs(0.95)),
    p99_ms: ms(r.latency.quantileUs(0.99)),
    max_ms: r.latency.count > 0 ? ms(r.latency.maxUs) : null,
    error_count: failed + r.unsent,
    errors: r.errors,
    unsent: r.unsent,
    cap_reached: r.capWaits > 0,
    seconds: r.windowSeconds,
    cpu_ms_per_request: cpuMs,
    cpu_cores: cpuCores,
    cluster_cpu_ms_per_request: subject.system === 'cluster' ? roundOrNull(cpuMsPerRequest(clusterSum, r.ok), 4) : null,
    nats_cpu_cores: natsDelta === undefined ? null : round(natsDelta / r.windowSeconds, 3),
    loadgen_cpu_cores: round(r.cpuSeconds / r.windowSeconds, 2),
    mean_candidates: r.ok > 0 ? round(r.candidates / r.ok, 1) : null,
    degraded_fraction: r.ok > 0 ? round(r.degraded / r.ok, 4) : null,
    degraded_stages: Object.fromEntries(Object.entries(r.degradedStages).map(([k, v]) => [k, round(v / Math.max(1, r.ok), 4)])),
    qps_ratio_vs_node: null,
    p99_ratio_vs_node: null,
    ...(r.firstError !== undefined && { first_error: r.firstError }),
  };
  return { row, merged: r };
}

/** Every phase of `opts` against one system: maximum throughput, then each rate. */
async function runPhases(subject: Subject, opts: ClusterBenchOptions, label: string): Promise<ClusterRow[]> {
  const rows: ClusterRow[] = [];
  for (const rate of [undefined, ...opts.rates]) {
    log(`${label}: ${rate === undefined ? `max (${opts.concurrency} outstanding)` : `${rate}/s`}: ${opts.warmupSeconds}s warm-up + ${opts.seconds}s`);
    const { row, merged } = await runPhase(subject, opts, rate);
    rows.push(row);
    const cpu = Object.entries(row.cpu_ms_per_request)
      .map(([name, v]) => `${name} ${fixed(v ?? undefined, 3)}`)
      .join(', ');
    log(
      `  ${grouped(row.ok_per_s)} OK/s${rate !== undefined ? ` (offered ${grouped(row.offered_per_s)}/s)` : ''}, p50 ${fixed(row.p50_ms ?? undefined, 2)} ms, ` +
        `p99 ${fixed(row.p99_ms ?? undefined, 2)} ms, CPU ms/request: ${cpu}; errors ${describeFailures(merged.errors, merged.unsent)}`,
    );
    for (const [name, server] of running.servers) {
      const exit = server.exitStatus;
      if (exit !== undefined) {
        throw new Error(`${name} exited (${exit.signal ?? `code ${exit.code}`}) during the ${label}'s phases; its stderr ended with:\n${server.stderrTail.slice(-8).join('\n')}`);
      }
    }
    await sleep(PHASE_GAP_MS);
  }
  return rows;
}

/** Spawns one server, registers it for cleanup, and times it from spawn to its serving line. */
async function startServer(name: string, args: string[], as?: Parameters<typeof ServerProcess.start>[4]): Promise<{ server: ServerProcess; seconds: number }> {
  const t0 = performance.now();
  const server = await ServerProcess.start(mainJs, args, SERVER_START_TIMEOUT_MS, undefined, as);
  const seconds = (performance.now() - t0) / 1000;
  running.servers.set(name, server);
  return { server, seconds };
}

function describeStartup(s: ReplicaStartup): string {
  const parts: string[] = [];
  if (s.streamSeconds !== undefined) parts.push(`stream catch-up ${fixed(s.streamSeconds, 1)}s${s.applied !== undefined ? ` (${grouped(s.applied)} msgs)` : ''}`);
  if (s.indexSeconds !== undefined) parts.push(`index ${fixed(s.indexSeconds, 1)}s${s.indexHow ? ` (${s.indexHow})` : ''}`);
  if (s.loadSeconds !== undefined) parts.push(`catalog load ${fixed(s.loadSeconds, 1)}s`);
  return parts.join(', ') || '-';
}

function printTable(rows: readonly ClusterRow[], shards: number): void {
  console.log(
    formatTable(
      'Retrieve, the same requests to both systems. "max" = closed loop (fixed outstanding calls, latency from send); a rate = open loop ' +
        '(latency from the ideal send time); OK/s = calls answered OK per second of the window; errors = failed calls by status (+ unsent); ' +
        'CPU ms/req = utime+stime (all threads, /proc/<pid>/stat) over the window / OK answers, per process; cl/node = cluster over node',
      tableHeaders(shards).map((header, j) => ({ header, align: j < 2 || header === 'errors' ? ('left' as const) : undefined })),
      rows.map((r) => tableCells(r, shards)),
    ),
  );
  console.log('');
}

function printProcesses(processes: readonly ProcessRecord[]): void {
  console.log(
    formatTable(
      'Processes: ready = seconds from spawn to the serving line (replicas: bootstrap from the stream into an empty directory, one replica at a time); ' +
        'RSS (VmRSS, MiB) once ready and after its system\'s phases; peak = VmHWM',
      [
        { header: 'process', align: 'left' },
        { header: 'pid' },
        { header: 'ready s' },
        { header: 'startup (its own log)', align: 'left' },
        { header: 'RSS ready' },
        { header: 'RSS after load' },
        { header: 'peak' },
      ],
      processes.map((p) => [
        p.name,
        String(p.pid),
        fixed(p.readySeconds, 1),
        p.detail,
        mebibytes(p.ready.rss),
        mebibytes(p.afterLoad.rss),
        mebibytes(p.afterLoad.peakRss ?? p.ready.peakRss),
      ]),
    ),
  );
  console.log('');
}

async function main(argv: string[]): Promise<number> {
  let opts: ClusterBenchOptions;
  try {
    opts = parseClusterArgs(argv);
  } catch (err) {
    process.stderr.write(`bench:cluster: ${(err as Error).message}\n\n${CLUSTER_USAGE}`);
    return 2;
  }
  if (opts.help) {
    process.stdout.write(CLUSTER_USAGE);
    return 0;
  }
  if (!fs.existsSync(mainJs)) {
    process.stderr.write(`bench:cluster: ${mainJs} is missing; run npm run build first\n`);
    return 2;
  }
  const natsBinary = findNatsServer();
  if (natsBinary === undefined) {
    process.stderr.write('bench:cluster: nats-server not found on PATH or in /usr/sbin (install the nats-server package, or set NATS_SERVER)\n');
    return 2;
  }
  const natsVersion = spawnSync(natsBinary, ['--version'], { encoding: 'utf8', timeout: 10_000 }).stdout.trim() || 'unknown version';
  running.keep = opts.keep;
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'funnel-bench-cluster-'));
  running.tmp = tmp;
  const cores = os.availableParallelism();
  const notes: string[] = [];
  const processes: ProcessRecord[] = [];

  // One catalog file for both systems: its flight windows are placed around one `now`.
  const catalog = path.join(tmp, 'catalog.jsonl');
  log(`generating ${opts.ads} ads x ${opts.dim}-d (seed ${opts.seed}) into ${catalog}`);
  let t0 = performance.now();
  await writeCatalogJsonl(catalog, { count: opts.ads, dim: opts.dim, seed: opts.seed, now: new Date() }, (rows) => log(`  ${rows.toLocaleString('en-US')} rows written`));
  const catalogSeconds = (performance.now() - t0) / 1000;
  const catalogBytes = fs.statSync(catalog).size;
  log(`building ${opts.pool} requests`);
  const pool = buildRequestPool({ size: opts.pool, dim: opts.dim, seed: opts.seed, sourceRows: Math.min(opts.ads, 8 * opts.pool), numResults: opts.numResults });

  // The cluster: nats-server, the publish, the replicas one at a time, then the root.
  log(`starting ${natsBinary} (JetStream store in ${path.join(tmp, 'nats')})`);
  const nats = await NatsServer.start(natsBinary, path.join(tmp, 'nats'));
  running.nats = nats;
  log(`nats-server ${nats.url} (pid ${nats.pid}); publishing the catalog for ${opts.shards} shards`);
  const published = await publishCatalog(catalog, nats.url, opts.shards, building.signal);
  const publishTimes = parsePublishTimes(published.stdout);
  const shardAddresses: string[] = [];
  const shardNames: string[] = [];
  for (let i = 0; i < opts.shards; i++) {
    const name = `shard-${i}`;
    const dir = path.join(tmp, name);
    fs.mkdirSync(dir);
    log(`starting replica ${i}/${opts.shards} on the empty ${dir}`);
    const { server, seconds } = await startServer(name, [
      '--data', dir, '--nats', nats.url, '--shard', `${i}/${opts.shards}`,
      '--host', '127.0.0.1', '--port', '0', '--metrics-port', '0',
    ]);
    const startup = parseReplicaStartup(server.stderrTail);
    log(`  ${name} serving on 127.0.0.1:${server.banner.port} after ${seconds.toFixed(1)}s (${server.banner.ads ?? '?'} ads; ${describeStartup(startup)})`);
    shardAddresses.push(`127.0.0.1:${server.banner.port}`);
    shardNames.push(name);
    processes.push({ name, pid: server.pid, readySeconds: seconds, detail: `${grouped(server.banner.ads)} ads; ${describeStartup(startup)}`, ready: treeMemory(server.pid), afterLoad: {} });
  }
  log(`starting funnel root over ${shardAddresses.join(';')}`);
  const { server: root, seconds: rootSeconds } = await startServer(
    'root',
    ['--shards', shardAddresses.join(';'), '--host', '127.0.0.1', '--port', '0', '--metrics-port', '0'],
    { command: 'root', banner: parseRootBanner },
  );
  const rootAddress = `127.0.0.1:${root.banner.port}`;
  log(`  root serving on ${rootAddress} after ${rootSeconds.toFixed(1)}s`);
  processes.push({ name: 'root', pid: root.pid, readySeconds: rootSeconds, detail: `fans out to ${opts.shards} shards`, ready: treeMemory(root.pid), afterLoad: {} });
  processes.push({ name: 'nats-server', pid: nats.pid, detail: `${natsVersion}, JetStream`, ready: processMemory(nats.pid), afterLoad: {} });

  // The node: the same file ingested into a local directory, served by one process.
  const nodeDir = path.join(tmp, 'node');
  log(`funnel ingest --data ${nodeDir}`);
  t0 = performance.now();
  await runIngest(mainJs, catalog, nodeDir, building.signal);
  const nodeIngestSeconds = (performance.now() - t0) / 1000;
  log(`  ingested in ${nodeIngestSeconds.toFixed(1)}s; starting funnel serve --workers 1`);
  const { server: node, seconds: nodeSeconds } = await startServer('node', ['--data', nodeDir, '--host', '127.0.0.1', '--port', '0', '--metrics-port', '0', '--workers', '1']);
  const nodeAddress = `127.0.0.1:${node.banner.port}`;
  log(`  node serving on ${nodeAddress} after ${nodeSeconds.toFixed(1)}s (${node.banner.ads ?? '?'} ads)`);
  const nodeRecord: ProcessRecord = {
    name: 'node',
    pid: node.pid,
    readySeconds: nodeSeconds,
    detail: `${grouped(node.banner.ads)} ads; after ingest --data ${fixed(nodeIngestSeconds, 1)}s`,
    ready: treeMemory(node.pid),
    afterLoad: {},
  };
  processes.unshift(nodeRecord);

  // The answers compared, before any load.
  log(`comparing the answers to the first ${opts.overlapRequests} requests (node, then cluster)`);
  const compared = pool.slice(0, opts.overlapRequests);
  const nodeAnswers = await retrieveIds(nodeAddress, compared, opts.timeoutMs);
  const clusterAnswers = await retrieveIds(rootAddress, compared, opts.timeoutMs);
  const pairs: [string[], string[]][] = [];
  const failedCompare: string[] = [];
  for (let i = 0; i < compared.length; i++) {
    const a = nodeAnswers[i];
    const b = clusterAnswers[i];
    if ('error' in a) failedCompare.push(`request ${i} on the node: ${a.error}`);
    if ('error' in b) failedCompare.push(`request ${i} on the cluster: ${b.error}`);
    if ('ids' in a && 'ids' in b) pairs.push([a.ids, b.ids]);
  }
  const overlapN = meanOverlap(pairs, opts.numResults);
  const overlapTop = meanOverlap(pairs, Math.min(OVERLAP_TOP, opts.numResults));
  const meanLen = (xs: Answer[]): number | null => {
    const ok = xs.filter((x): x is { ids: string[] } => 'ids' in x);
    return ok.length === 0 ? null : ok.reduce((a, x) => a + x.ids.length, 0) / ok.length;
  };
  if (failedCompare.length > 0) notes.push(`comparison: ${failedCompare.length} call(s) failed, first: ${failedCompare[0]}`);

  const channels = opts.channels;
  const rows: ClusterRow[] = [];
  // One node.
  log(`forking ${opts.procs} load generator(s) for the node, ${channels} channels each`);
  running.generators = await LoadGenPool.start(opts.procs, (i) => ({ address: nodeAddress, channels, requests: pool, timeoutMs: opts.timeoutMs, generator: i }));
  rows.push(...(await runPhases({ system: 'node', generators: running.generators, pids: new Map([['node', node.pid]]) }, opts, 'node')));
  nodeRecord.afterLoad = treeMemory(node.pid);
  await running.generators.close();
  running.generators = undefined;
  const nodeExit = await stopServer('node');

  // The cluster, through its root.
  log(`forking ${opts.procs} load generator(s) for the root, ${channels} channels each`);
  running.generators = await LoadGenPool.start(opts.procs, (i) => ({ address: rootAddress, channels, requests: pool, timeoutMs: opts.timeoutMs, generator: i }));
  const clusterPids = new Map<string, number>([['root', root.pid], ...shardNames.map((name): [string, number] => [name, running.servers.get(name)!.pid])]);
  rows.push(...(await runPhases({ system: 'cluster', generators: running.generators, pids: clusterPids, natsPid: nats.pid }, opts, 'cluster')));
  for (const p of processes) {
    if (p.name === 'nats-server') p.afterLoad = processMemory(p.pid);
    else if (p.name !== 'node') p.afterLoad = treeMemory(p.pid);
  }
  const problems = new Map<string, ReadonlyMap<string, number>>([['node', node.problems], ...[...running.servers].map(([name, s]): [string, ReadonlyMap<string, number>] => [name, s.problems])]);
  const exits = await cleanup();
  if (nodeExit !== undefined) exits.set('node', nodeExit);

  const final = withRatios(rows);
  const nodeMax = final.find((r) => r.system === 'node' && r.phase === 'max');
  const clusterMax = final.find((r) => r.system === 'cluster' && r.phase === 'max');
  const cpus = os.cpus();

  console.log(`# Cluster benchmark: one node vs funnel root + ${opts.shards} shards x 1 replica, on one machine`);
  console.log(
    `data:     GENERATED catalog, ${grouped(opts.ads)} ads x ${opts.dim}-d, seed ${opts.seed}: one JSONL file (${mebibytes(catalogBytes)} MiB, ` +
      `written in ${catalogSeconds.toFixed(1)}s) ingested by the node and published to the stream for the cluster`,
  );
  console.log(
    `requests: one pool of ${grouped(opts.pool)} Retrieve requests (attributes seed ${opts.seed + 1}, ${opts.dim}-d user embeddings near catalog ads; ` +
      `num_results ${opts.numResults}; deadline ${opts.timeoutMs} ms), sent round robin to both systems`,
  );
  console.log(
    `load:     ${opts.procs} load generator process(es) x ${channels} channels; max = closed loop, ${opts.concurrency} outstanding; ` +
      `${opts.rates.map((r) => `${grouped(r)}/s`).join(', ')} = open loop, cap ${opts.maxOutstanding} outstanding; ` +
      `${opts.seconds}s measured after ${opts.warmupSeconds}s warm-up per phase; the node's phases first, then the cluster's`,
  );
  console.log(
    `machine:  ${cpus[0]?.model ?? 'unknown CPU'}, ${cores} logical cores, ${(os.totalmem() / 1024 ** 3).toFixed(1)} GiB RAM; node ${process.version}; ` +
      `load avg ${os.loadavg().map((x) => x.toFixed(2)).join(' ')} at the end`,
  );
  console.log(
    `node:     funnel ingest --data: ${nodeIngestSeconds.toFixed(1)}s; funnel serve --workers 1: serving line ${nodeSeconds.toFixed(1)}s after spawn`,
  );
  console.log(
    `cluster:  ${natsVersion} (-js, loopback); funnel ingest --nats --shards ${opts.shards}: ${published.seconds.toFixed(1)}s wall ` +
      `(its own report: validate ${fixed(publishTimes.validate, 1)}s, publish ${fixed(publishTimes.publish, 1)}s, total ${fixed(publishTimes.total, 1)}s); ` +
      `replicas bootstrapped one at a time: ${processes
        .filter((p) => p.name.startsWith('shard-'))
        .map((p) => `${p.name} ${fixed(p.readySeconds, 1)}s`)
        .join(', ')} from spawn to serving line; root ${rootSeconds.toFixed(1)}s`,
  );
  console.log(
    `overlap:  first ${compared.length} requests, answered one at a time by each system before any load: ` +
      `overlap@${opts.numResults} ${fixed(overlapN.mean ?? undefined, 3)}, overlap@${Math.min(OVERLAP_TOP, opts.numResults)} ${fixed(overlapTop.mean ?? undefined, 3)} ` +
      `(share of the node's top-N ad_ids also in the cluster's top N, mean over ${overlapN.compared} requests` +
      `${overlapN.emptyReference > 0 ? `; ${overlapN.emptyReference} with an empty node answer left out` : ''}); ` +
      `mean answer length node ${fixed(meanLen(nodeAnswers) ?? undefined, 1)}, cluster ${fixed(meanLen(clusterAnswers) ?? undefined, 1)}. ` +
      'Not 1.0 by design: each shard ranks within its own part and MMR runs per shard',
  );
  console.log('');
  printProcesses(processes);
  printTable(final, opts.shards);

  notes.unshift(
    `every process (nats-server, ${opts.shards} replicas, root, node) shares this machine's ${cores} cores with the load generator, ` +
      `so the cluster cannot beat one node here: its figures measure the root's overhead (an extra hop, fan-out and merge), not scale-out`,
  );
  if (nodeMax && clusterMax) {
    notes.push(
      `max QPS cluster/node ${fixed(clusterMax.qps_ratio_vs_node ?? undefined, 2)} (${grouped(clusterMax.ok_per_s)} / ${grouped(nodeMax.ok_per_s)}); ` +
        `CPU per request: node ${fixed(nodeMax.cpu_ms_per_request.node ?? undefined, 3)} ms, cluster ${fixed(clusterMax.cluster_cpu_ms_per_request ?? undefined, 3)} ms ` +
        `(root ${fixed(clusterMax.cpu_ms_per_request.root ?? undefined, 3)} ms of it)`,
    );
  }
  for (const r of final) {
    const label = `${r.system} ${r.phase === 'max' ? 'max' : `${r.target_qps}/s`}`;
    if (r.cap_reached) notes.push(`${label}: the cap of ${r.outstanding} outstanding calls was reached (the system fell behind the rate); the wait is inside the latencies`);
    if (r.phase === 'rate' && r.target_qps !== null && r.offered_per_s < 0.95 * r.target_qps) {
      notes.push(`${label}: only ${grouped(r.offered_per_s)}/s was offered (the generator fell behind)`);
    }
    if (r.degraded_fraction !== null && r.degraded_fraction > 0) {
      const stages = Object.entries(r.degraded_stages).map(([k, v]) => `${k} ${fixed(v * 100, 1)}%`).join(', ');
      notes.push(`${label}: ${fixed(r.degraded_fraction * 100, 1)}% of OK answers were degraded${stages ? ` (degraded_stages: ${stages})` : ''}`);
    }
    if (r.first_error !== undefined) notes.push(`${label}: first error ${r.first_error}`);
    if (r.nats_cpu_cores !== null && r.nats_cpu_cores > 0.05) notes.push(`${label}: nats-server used ${fixed(r.nats_cpu_cores, 2)} cores`);
  }
  for (const [name, how] of exits) if (!/with code 0\b/.test(how)) notes.push(`${name} ${how} (expected: drain and exit 0)`);
  for (const [name, logged] of problems) {
    if (logged.size > 0) notes.push(`${name} logged: ${[...logged].map(([msg, n]) => `${msg} (x${n})`).join('; ')}`);
  }
  for (const n of notes) console.log(`note: ${n}`);
  console.log('');

  for (const r of final) console.log(JSON.stringify(r));
  for (const p of processes) {
    console.log(
      JSON.stringify({
        phase: 'process',
        process: p.name,
        pid: p.pid,
        ready_s: roundOrNull(p.readySeconds, 2),
        rss_mb_ready: p.ready.rss === undefined ? null : round(p.ready.rss / 2 ** 20, 1),
        rss_mb_after_load: p.afterLoad.rss === undefined ? null : round(p.afterLoad.rss / 2 ** 20, 1),
        peak_rss_mb: (p.afterLoad.peakRss ?? p.ready.peakRss) === undefined ? null : round((p.afterLoad.peakRss ?? p.ready.peakRss)! / 2 ** 20, 1),
        detail: p.detail,
      }),
    );
  }
  console.log(
    JSON.stringify({
      phase: 'summary',
      ads: opts.ads,
      dim: opts.dim,
      seed: opts.seed,
      shards: opts.shards,
      cores,
      node_ingest_s: round(nodeIngestSeconds, 2),
      node_ready_s: round(nodeSeconds, 2),
      publish_wall_s: round(published.seconds, 2),
      publish_reported_s: publishTimes,
      replica_ready_s: Object.fromEntries(processes.filter((p) => p.name.startsWith('shard-')).map((p) => [p.name, roundOrNull(p.readySeconds, 2)])),
      root_ready_s: round(rootSeconds, 2),
      overlap_n: opts.numResults,
      overlap_at_n: roundOrNull(overlapN.mean, 4),
      overlap_at_10: roundOrNull(overlapTop.mean, 4),
      overlap_requests: overlapN.compared,
      max_qps_ratio_cluster_over_node: clusterMax?.qps_ratio_vs_node ?? null,
      p99_ratio_cluster_over_node_at_max: clusterMax?.p99_ratio_vs_node ?? null,
      exits: Object.fromEntries(exits),
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
    process.stderr.write(`bench:cluster: ${process.env.BENCH_DEBUG ? e?.stack : e?.message ?? String(err)}\n`);
    await cleanup().catch(() => {});
    process.exitCode = 1;
  },
);
