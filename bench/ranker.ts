/**
 * `npm run bench:ranker`: the EarlyRanker as one Retrieve runs it (runStage, as the funnel
 * does) over `--candidates` candidates, with the linear weights and with an ONNX model (the
 * fixture MLP by default), one request at a time or `--concurrency` at once. Prints per model:
 * process CPU per run (every thread: the model worker's inference and V8's GC helpers
 * included), the JS thread's own CPU per run (what the request thread spends; Linux), wall
 * latency percentiles, fallbacks, and the CPU ratio to the linear model; then one JSON line per row.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { parseConfigObject } from '../src/config/load';
import { popularitySchema, RANKER_FEATURES, type PipelineConfig } from '../src/config/schema';
import { NO_OBSERVER, runStage, type ContextBase } from '../src/pipeline/run-stage';
import { SOURCE_BIT, type Candidate, type PopularityView, type RetrieveQuery, type ServingView, type VectorSource } from '../src/pipeline/types';
import { AdTable } from '../src/serving/ad-table';
import { EarlyRanker } from '../src/stages/ranking/early-ranker';
import { stopModelWorkers } from '../src/stages/ranking/onnx-host';
import { positiveInt } from './lib/args';
import { fixed, formatTable, grouped } from './lib/table';
import { collectGarbage } from './lib/timing';

const DEFAULT_MODEL = path.resolve(__dirname, '../../test/fixtures/onnx/mlp.onnx');

const USAGE = `usage: npm run bench:ranker -- [options]

  --candidates N   candidates per run (default 300, the default keep)
  --ads N          ads in the table the candidates are drawn from (default 20000)
  --dim N          embedding dimension (default 64)
  --seconds S      timed seconds per model (default 3)
  --concurrency N  runs in flight at once (default 1: one request's latency)
  --model FILE     ONNX model over the 7 features in README order (default: the fixture MLP)
  --help
`;

interface Options {
  candidates: number;
  ads: number;
  dim: number;
  seconds: number;
  concurrency: number;
  model: string;
}

function parseOptions(argv: string[]): Options | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      candidates: { type: 'string' },
      ads: { type: 'string' },
      dim: { type: 'string' },
      seconds: { type: 'string' },
      concurrency: { type: 'string' },
      model: { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) return undefined;
  return {
    candidates: positiveInt('candidates', values.candidates, 300),
    ads: positiveInt('ads', values.ads, 20_000),
    dim: positiveInt('dim', values.dim, 64),
    seconds: positiveInt('seconds', values.seconds, 3),
    concurrency: positiveInt('concurrency', values.concurrency, 1),
    model: path.resolve(values.model ?? DEFAULT_MODEL),
  };
}

/** A deterministic generator (mulberry32). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Row-major vectors with the batch read the serving state offers. */
class FlatVectors implements VectorSource {
  readonly metric = 'ip' as const;
  constructor(
    readonly dim: number,
    private readonly rows: Float32Array,
  ) {}
  get(id: number): Float32Array | undefined {
    return this.rows.subarray(id * this.dim, (id + 1) * this.dim);
  }
  gather(ids: Uint32Array, out: Float32Array): number {
    for (let i = 0; i < ids.length; i++) out.set(this.rows.subarray(ids[i] * this.dim, (ids[i] + 1) * this.dim), i * this.dim);
    return ids.length;
  }
}

class RatePopularity implements PopularityView {
  constructor(private readonly rates: Float64Array) {}
  ranked(): Uint32Array {
    return new Uint32Array(0);
  }
  rate(id: number): number {
    return this.rates[id];
  }
}

interface Bench {
  state: ServingView;
  query: RetrieveQuery;
  /** Candidate sets, one per run in turn (fresh objects are made from them per run). */
  sets: { id: number; sources: number; annScore: number }[][];
}

function setup(o: Options): Bench {
  const r = rng(7);
  const ads = new AdTable();
  for (let id = 0; id < o.ads; id++) {
    ads.set({
      id,
      ad_id: `ad${id}`,
      advertiser_id: `adv${id % 500}`,
      campaign_id: `c${id % 2000}`,
      category: `cat${id % 20}`,
      status: 'active',
      bid_micros: Math.round(100_000 + r() * 5_000_000),
      daily_budget_micros: null,
      quality: r(),
      ctr_prior: 0.001 + r() * 0.1,
      targeting: null,
      start_ms: null,
      end_ms: null,
      seq: 1,
    });
  }
  const rows = new Float32Array(o.ads * o.dim);
  for (let i = 0; i < rows.length; i++) rows[i] = (r() - 0.5) / Math.sqrt(o.dim);
  const rates = new Float64Array(o.ads);
  for (let id = 0; id < o.ads; id++) rates[id] = r() < 0.2 ? r() * 0.05 : 0;
  const embedding = new Float32Array(o.dim);
  for (let i = 0; i < o.dim; i++) embedding[i] = r() - 0.5;
  const vectors = new FlatVectors(o.dim, rows);
  const state: ServingView = { ads, vectors, popularity: new RatePopularity(rates), popularityConfig: popularitySchema.parse({}), seq: 1 };
  const query: RetrieveQuery = {
    requestId: 'bench',
    userId: 'u',
    attributes: {},
    embedding,
    numResults: 50,
    excludeAdIds: new Set(),
    excludeAdvertiserIds: new Set(),
    blockedCategories: new Set(),
    pipeline: 'default',
    debug: false,
  };
  // As the funnel hands them over: Ann's candidates carry their similarity, the others not yet.
  const sets = Array.from({ length: 64 }, () => {
    const seen = new Set<number>();
    const set: { id: number; sources: number; annScore: number }[] = [];
    while (set.length < o.candidates && seen.size < o.ads) {
      const id = Math.floor(r() * o.ads);
      if (seen.has(id)) continue;
      seen.add(id);
      const sources = [SOURCE_BIT.Ann, SOURCE_BIT.Targeting, SOURCE_BIT.Popularity, SOURCE_BIT.Ann | SOURCE_BIT.Targeting][set.length % 4];
      let annScore = NaN;
      if (sources & SOURCE_BIT.Ann) {
        const v = vectors.get(id)!;
        annScore = 0;
        for (let i = 0; i < o.dim; i++) annScore += embedding[i] * v[i];
      }
      set.push({ id, sources, annScore });
    }
    return set;
  });
  return { state, query, sets };
}

interface Row {
  model: string;
  candidates: number;
  concurrency: number;
  runs: number;
  cpu_us_per_run: number;
  js_thread_us_per_run: number;
  p50_us: number;
  p99_us: number;
  fallbacks: number;
  cpu_ratio_to_linear: number;
}

/** CPU time of the calling thread, ns (Linux /proc/thread-self/schedstat); undefined elsewhere. */
function threadCpuNs(): number | undefined {
  try {
    return Number(fs.readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[0]);
  } catch {
    return undefined;
  }
}

function percentile(sorted: Float64Array, q: number): number {
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

async function measure(name: string, b: Bench, pipeline: PipelineConfig, o: Options): Promise<Omit<Row, 'cpu_ratio_to_linear'>> {
  const ranker = new EarlyRanker();
  const base: ContextBase = { query: b.query, pipeline, state: b.state, nowMs: Date.now(), eligible: null };
  const signal = new AbortController().signal;
  const timeoutMs = pipeline.stages.EarlyRanker.timeout_ms;
  let next = 0;
  let fallbacks = 0;
  const once = async (): Promise<number> => {
    // Fresh candidates per run, as Merge hands them over (the stage writes score and annScore);
    // a literal, since an object spread here cost more than the linear stage itself.
    const set = b.sets[next++ % b.sets.length];
    const input = new Array<Candidate>(set.length);
    for (let i = 0; i < set.length; i++) input[i] = { id: set[i].id, sources: set[i].sources, annScore: set[i].annScore, sourceRank: 0, score: NaN };
    const t0 = performance.now();
    const r = await runStage(ranker, base, input, { timeoutMs }, NO_OBSERVER, signal);
    const us = (performance.now() - t0) * 1000;
    if (!r.ok) throw new Error(`${name}: the stage failed: ${r.report.error}`);
    if (r.report.detail.fallback !== undefined && fallbacks++ === 0) process.stderr.write(`${name}: ${r.report.detail.fallback}\n`);
    return us;
  };
  const loop = async (until: number, out: number[]) => {
    while (performance.now() < until) out.push(await once());
  };
  // Warm-up: JIT, the model worker, onnxruntime's first runs.
  await Promise.all(Array.from({ length: o.concurrency }, () => loop(performance.now() + 500, [])));
  fallbacks = 0;
  collectGarbage();
  const lat: number[] = [];
  const js0 = threadCpuNs();
  const cpu0 = process.cpuUsage();
  const until = performance.now() + o.seconds * 1000;
  await Promise.all(Array.from({ length: o.concurrency }, () => loop(until, lat)));
  const cpu = process.cpuUsage(cpu0);
  const js1 = threadCpuNs();
  const sorted = Float64Array.from(lat).sort();
  return {
    model: name,
    candidates: b.sets[0].length,
    concurrency: o.concurrency,
    runs: lat.length,
    cpu_us_per_run: (cpu.user + cpu.system) / lat.length,
    js_thread_us_per_run: js0 === undefined || js1 === undefined ? NaN : (js1 - js0) / 1000 / lat.length,
    p50_us: percentile(sorted, 0.5),
    p99_us: percentile(sorted, 0.99),
    fallbacks,
  };
}

async function main(): Promise<void> {
  const o = parseOptions(process.argv.slice(2));
  if (!o) {
    process.stdout.write(USAGE);
    return;
  }
  process.stderr.write(`setting up ${grouped(o.ads)} ads, ${o.candidates} candidates per run...\n`);
  const b = setup(o);
  // A timeout no run reaches: the bench measures the model, not its fallback (counted if any).
  const ranker = { keep: 300, timeout_ms: 10_000 };
  const linear = parseConfigObject({ pipelines: { default: { stages: { EarlyRanker: ranker } } } }, 'bench').pipelines.default;
  const onnx = parseConfigObject(
    { pipelines: { default: { stages: { EarlyRanker: { ...ranker, model: { kind: 'onnx', path: o.model, features: [...RANKER_FEATURES] } } } } } },
    'bench',
  ).pipelines.default;
  const rows: Row[] = [];
  const lin = await measure('linear', b, linear, o);
  rows.push({ ...lin, cpu_ratio_to_linear: 1 });
  const m = await measure(`onnx ${path.basename(o.model)}`, b, onnx, o);
  rows.push({ ...m, cpu_ratio_to_linear: m.cpu_us_per_run / lin.cpu_us_per_run });
  await stopModelWorkers();

  console.log('# EarlyRanker benchmark: linear weights vs ONNX model');
  console.log(`machine:   ${os.cpus()[0]?.model ?? 'unknown'}, ${os.cpus().length} cores, load avg ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}; node ${process.version}`);
  console.log(`workload:  ${grouped(o.ads)} ads, dim ${o.dim}, ${o.candidates} candidates per run, ${o.seconds} s per model, concurrency ${o.concurrency}`);
  if (typeof (globalThis as { gc?: unknown }).gc !== 'function') console.log('warning: node started without --expose-gc');
  console.log('');
  console.log(
    formatTable(
      'CPU per EarlyRanker run (process: every thread, the model worker included; JS thread: the request thread alone)',
      [
        { header: 'model', align: 'left' },
        { header: 'cand' },
        { header: 'runs' },
        { header: 'CPU us/run' },
        { header: 'JS thread us/run' },
        { header: 'p50 us' },
        { header: 'p99 us' },
        { header: 'fallbacks' },
        { header: 'CPU x linear' },
      ],
      rows.map((r) => [
        r.model,
        String(r.candidates),
        grouped(r.runs),
        fixed(r.cpu_us_per_run, 1),
        fixed(r.js_thread_us_per_run, 1),
        fixed(r.p50_us, 1),
        fixed(r.p99_us, 1),
        String(r.fallbacks),
        fixed(r.cpu_ratio_to_linear, 2),
      ]),
    ),
  );
  console.log('');
  for (const r of rows) console.log(JSON.stringify(r));
}

main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error)?.stack ?? String(err)}\n`);
  process.exitCode = 1;
});
