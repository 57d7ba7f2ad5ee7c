/**
 * `npm run bench:ann`: builds our HNSW index and the peers' (hnswlib-node, usearch) on the same
 * vectors with the same M and efConstruction, then prints per system and search setting the
 * build seconds, memory, recall@10 against exact ground truth and single-thread QPS (one query
 * per call); the exact-scan bandwidth table; with --filtered, the filtered-search table; a
 * summary at recall@10 >= 0.95; and finally one JSON line per row (CONTRACT section 5).
 * Progress goes to stderr, results to stdout.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { availableSimdLevels, internals, simdLevel } from '../src/native/index';
import { ANN_USAGE, AnnBenchOptions, parseAnnArgs } from './lib/args';
import { loadOrGenerateMixture, SeededRandom } from './lib/dataset';
import { hasBit, randomSubset, toBitset } from './lib/filters';
import { FunnelFlatSubject, FunnelHnswSubject } from './lib/funnel';
import { readFvecs, readIvecs } from './lib/fvecs';
import { BuildReport, GraphParams, HnswlibSubject, UsearchSubject } from './lib/peers';
import { IdRows, recallAtK } from './lib/recall';
import { qpsAtRecall, SweepPoint } from './lib/summary';
import { Column, fixed, formatTable, grouped, mebibytes, round } from './lib/table';
import {
  collectGarbage, interleavedSweep, measureSearcher, median, progressLog, QuerySearcher, SearchMeasurement, SweepSubject, timePasses,
} from './lib/timing';

/** Recall target of the summary. */
const TARGET_RECALL = 0.95;
/** Allowed fractions of the filtered table. */
const FILTER_FRACTIONS = [0.5, 0.1, 0.01, 0.001];
/** Batch sizes of the exact-scan table. */
const FLAT_BATCHES = [8, 32, 64];
/** The single-query exact-scan pass reads about this many bytes (at least 256 queries, at most all). */
const FLAT_PASS_BYTES = 8e9;
/** Buffer of the addon's read-bandwidth probe: this or the base matrix, whichever is larger. */
const BANDWIDTH_MIN_BYTES = 512 * 1024 * 1024;
const BANDWIDTH_REPS = 5;

const repoRoot = path.resolve(__dirname, '..', '..');
const log = progressLog();

/** The vectors of one run. */
interface Dataset {
  label: string;
  generated: boolean;
  dim: number;
  n: number;
  nq: number;
  base: Float32Array;
  query: Float32Array;
  /** Ground truth read from --gt, rows truncated to nq. */
  givenGt?: IdRows;
}

/** One printed and JSON-emitted row. */
interface BenchRow {
  system: string;
  setting: string;
  recall_at_10: number;
  qps: number;
  build_s: number;
  [extra: string]: unknown;
}

/** One unfiltered sweep point of one built system. */
interface SweepRow {
  system: string;
  buildThreads: number;
  build: BuildReport;
  ef: number;
  recall: number;
  recallK: number;
  /** Median over the rounds. */
  qps: number;
  /** Each round's QPS, in round order. */
  qpsRounds: number[];
}


function percent(fraction: number): string {
  return `${+(fraction * 100).toPrecision(3)}%`;
}

function l3CacheBytes(): number | undefined {
  try {
    const dir = '/sys/devices/system/cpu/cpu0/cache';
    for (const entry of fs.readdirSync(dir)) {
      if (fs.readFileSync(path.join(dir, entry, 'level'), 'utf8').trim() !== '3') continue;
      const m = /^(\d+)([KMG]?)/.exec(fs.readFileSync(path.join(dir, entry, 'size'), 'utf8').trim());
      if (m) return Number(m[1]) * ({ '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 } as Record<string, number>)[m[2]];
    }
  } catch {
    // Not Linux, or no sysfs cache description: the header just omits the L3 size.
  }
  return undefined;
}

function loadDataset(opts: AnnBenchOptions): Dataset {
  if (opts.generate !== undefined) {
    const spec = { n: opts.generate, queries: opts.genQueries, dim: opts.dim, clusters: opts.clusters, seed: opts.seed };
    const data = loadOrGenerateMixture(spec, path.join(repoRoot, 'bench', '.cache'));
    const nq = Math.min(spec.queries, opts.maxQueries ?? spec.queries);
    return {
      label: `generated Gaussian mixture n=${spec.n} d=${spec.dim} clusters=${spec.clusters} seed=${spec.seed}`,
      generated: true,
      dim: spec.dim,
      n: spec.n,
      nq,
      base: data.base,
      query: data.query.subarray(0, nq * spec.dim),
    };
  }
  const baseFile = opts.base as string;
  const queryFile = opts.query as string;
  const base = readFvecs(baseFile);
  const query = readFvecs(queryFile, { maxRows: opts.maxQueries });
  if (query.dim !== base.dim) {
    throw new Error(`${queryFile}: dimension ${query.dim} differs from the base's ${base.dim}`);
  }
  let givenGt: IdRows | undefined;
  if (opts.gt !== undefined) {
    const gt = readIvecs(opts.gt, { maxRows: query.rows });
    if (gt.rows < query.rows) throw new Error(`${opts.gt}: ${gt.rows} rows, fewer than the ${query.rows} queries`);
    if (gt.dim < opts.k) throw new Error(`${opts.gt}: ${gt.dim} ids per row, fewer than k=${opts.k}`);
    for (let i = 0; i < gt.data.length; i++) {
      if (gt.data[i] < 0 || gt.data[i] >= base.rows) {
        throw new Error(`${opts.gt}: id ${gt.data[i]} (row ${Math.floor(i / gt.dim)}) outside the ${base.rows} base rows`);
      }
    }
    givenGt = { rows: query.rows, cols: gt.dim, data: gt.data };
  }
  return {
    label: `${path.basename(baseFile)} + ${path.basename(queryFile)}`,
    generated: false,
    dim: base.dim,
    n: base.rows,
    nq: query.rows,
    base: base.data,
    query: query.data,
    givenGt,
  };
}

/** The kernel's transparent-huge-page mode (the bracketed word of the sysfs file), or "unknown". */
function transparentHugePages(): string {
  try {
    const text = fs.readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8');
    return /\[(\w+)\]/.exec(text)?.[1] ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

function printHeader(opts: AnnBenchOptions, ds: Dataset): void {
  const cpus = os.cpus();
  const l3 = l3CacheBytes();
  const baseBytes = ds.n * ds.dim * 4;
  console.log('# ANN benchmark');
  console.log(`dataset:  ${ds.label}${ds.generated ? ' (GENERATED data, not real)' : ''}`);
  console.log(
    `shape:    n=${grouped(ds.n)} dim=${ds.dim} queries=${grouped(ds.nq)} metric=${opts.metric} k=${opts.k} ` +
      `M=${opts.M} efConstruction=${opts.efConstruction} build threads (ours)=${opts.threads}`,
  );
  console.log(`ground truth: ${opts.gt ? `${opts.gt} (checked against our flat index)` : 'exact, our FlatIndex.searchBatch'}`);
  console.log(
    `machine:  ${cpus[0]?.model ?? 'unknown CPU'}, ${cpus.length} logical cores, ` +
      `${(os.totalmem() / 1024 ** 3).toFixed(1)} GiB RAM${l3 ? `, L3 ${mebibytes(l3)} MiB` : ''}; node ${process.version}`,
  );
  console.log(`simd:     ${simdLevel()} (available: ${availableSimdLevels().join(', ')})`);
  const thp = transparentHugePages();
  console.log(
    `huge pages: transparent huge pages "${thp}"` +
      (thp === 'madvise'
        ? ' (ours ask for them on large arrays; the peers do not, and run on 4 KiB pages)'
        : thp === 'always'
          ? ' (every system gets them)'
          : ' (no system gets them)'),
  );
  console.log(`load avg: ${os.loadavg().map((x) => x.toFixed(2)).join(' ')} (1/5/15 min) at start`);
  console.log(
    `base matrix ${mebibytes(baseBytes)} MiB${l3 !== undefined && baseBytes <= l3 ? ' (fits in L3: scan figures are cache, not DRAM, bandwidth)' : ''}`,
  );
  if ((globalThis as { gc?: unknown }).gc === undefined) {
    console.log('warning: node started without --expose-gc; no GC between systems');
  }
  console.log('');
}

/** Checks the --gt file against our exact answers: they must agree up to ties. */
function checkGivenGt(exact: IdRows, given: IdRows, k: number): string {
  let sameRows = 0;
  for (let q = 0; q < exact.rows; q++) {
    let same = true;
    for (let i = 0; i < k && same; i++) same = exact.data[q * exact.cols + i] === given.data[q * given.cols + i];
    if (same) sameRows++;
  }
  const recall = recallAtK(exact, given, k);
  return `flat vs --gt: recall@${k} = ${recall.toFixed(4)}, identical top-${k} rows ${sameRows}/${exact.rows}`;
}

function runFlatTable(
  opts: AnnBenchOptions,
  ds: Dataset,
  flat: FunnelFlatSubject,
  flatBuildSeconds: number,
  truth: IdRows,
  rows: BenchRow[],
): void {
  const bytesPerQuery = ds.n * ds.dim * 4;
  const fq = Math.min(ds.nq, Math.max(256, Math.ceil(FLAT_PASS_BYTES / bytesPerQuery)));
  const query = ds.query.subarray(0, fq * ds.dim);
  const truthRows: IdRows = { ...truth, rows: fq };
  const bwBytes = Math.max(BANDWIDTH_MIN_BYTES, bytesPerQuery);
  log(`read bandwidth probe over ${mebibytes(bwBytes)} MiB`);
  const bandwidth = internals.readBandwidth(bwBytes, BANDWIDTH_REPS) / 1e9;

  const table: string[][] = [];
  const add = (mode: string, perCall: number, m: { qps: number }, recall: number): void => {
    const gbs = (m.qps * bytesPerQuery) / 1e9;
    table.push([mode, String(perCall), grouped(m.qps), fixed(gbs, 2), fixed(gbs / bandwidth, 2), fixed(recall, 4)]);
    rows.push({
      system: flat.name,
      setting: perCall === 1 ? 'single' : `batch=${perCall}`,
      recall_at_10: round(recall, 4),
      qps: round(m.qps, 1),
      build_s: round(flatBuildSeconds, 3),
      table: 'exact-scan',
      queries: fq,
      gb_s: round(gbs, 3),
      read_bw_gb_s: round(bandwidth, 3),
      bw_ratio: round(gbs / bandwidth, 3),
    });
  };

  log(`flat single-query scan over ${fq} queries`);
  collectGarbage();
  const single = measureSearcher(flat.searcher(query, opts.k), fq, opts.k, opts.minSeconds);
  add('single', 1, single, recallAtK(single.found, truthRows, 10));
  for (const batch of FLAT_BATCHES) {
    log(`flat searchBatch, batches of ${batch}`);
    collectGarbage();
    const searcher = flat.batchSearcher(query, opts.k, batch);
    const found = searcher.collect();
    const m = timePasses(searcher.pass, fq, opts.minSeconds, false);
    add('batched', batch, m, recallAtK(found, truthRows, 10));
  }
  console.log(
    formatTable(
      `Exact scan (funnel-flat): ${mebibytes(bytesPerQuery)} MiB read per query; single-thread read bandwidth ` +
        `${bandwidth.toFixed(2)} GB/s (internals.readBandwidth over ${mebibytes(bwBytes)} MiB, best of ${BANDWIDTH_REPS}); ` +
        `${fq} queries; batched GB/s = queries x base bytes / time`,
      [
        { header: 'mode', align: 'left' },
        { header: 'queries/call' },
        { header: 'QPS' },
        { header: 'GB/s' },
        { header: 'x read bw' },
        { header: 'recall@10' },
      ],
      table,
    ),
  );
  console.log('');
}

function printMainTable(opts: AnnBenchOptions, ds: Dataset, sweep: SweepRow[], rows: BenchRow[]): void {
  const table = sweep.map((r) => [
    r.system,
    String(r.buildThreads),
    fixed(r.build.seconds, 2),
    mebibytes(r.build.rssDeltaBytes),
    `${mebibytes(r.build.indexBytes)}${r.build.indexBytesSource === 'serialized' ? '*' : ''}`,
    String(r.ef),
    fixed(r.recall, 4),
    ...(opts.k !== 10 ? [fixed(r.recallK, 4)] : []),
    grouped(r.qps),
    `${grouped(Math.min(...r.qpsRounds))}-${grouped(Math.max(...r.qpsRounds))}`,
    fixed(1e6 / r.qps, 1),
  ]);
  const columns: Column[] = [
    { header: 'system', align: 'left' },
    { header: 'build thr' },
    { header: 'build s' },
    { header: 'RSS delta MiB' },
    { header: 'index MiB' },
    { header: 'ef' },
    { header: 'recall@10' },
    ...(opts.k !== 10 ? [{ header: `recall@${opts.k}` }] : []),
    { header: 'QPS' },
    { header: 'rounds min-max' },
    { header: 'us/query' },
  ];
  console.log(
    formatTable(
      `Unfiltered search: ${grouped(ds.nq)} queries, one query per call, single thread; QPS = median of ` +
        `${opts.rounds} round${opts.rounds > 1 ? 's' : ''} timed after every build, each round over every system and ef ` +
        `(order reversed every other round); ` +
        `index MiB: ours = memoryBytes(), * = peer's serialized index size; RSS delta is approximate ` +
        `(memory freed by an earlier system may be reused)`,
      columns,
      table,
    ),
  );
  console.log('');
  for (const r of sweep) {
    rows.push({
      system: r.system,
      setting: `ef=${r.ef}`,
      recall_at_10: round(r.recall, 4),
      qps: round(r.qps, 1),
      qps_rounds: r.qpsRounds.map((x) => round(x, 1)),
      build_s: round(r.build.seconds, 3),
      table: 'unfiltered',
      queries: ds.nq,
      ...(opts.k !== 10 ? { [`recall_at_${opts.k}`]: round(r.recallK, 4) } : {}),
      build_threads: r.buildThreads,
      rss_mb: round(r.build.rssDeltaBytes / (1 << 20), 1),
      index_mb: round(r.build.indexBytes / (1 << 20), 1),
      index_mb_source: r.build.indexBytesSource,
    });
  }
}

function describe(at: ReturnType<typeof qpsAtRecall>): { measured: string; interpolated: string } {
  return {
    measured: at.measured ? `${grouped(at.measured.qps)} (${at.measured.setting})` : 'not reached',
    interpolated: at.interpolated
      ? `${grouped(at.interpolated.qps)} (${at.interpolated.between.join('..')})`
      : at.measured
        ? 'n/a (lowest ef already there)'
        : 'not reached',
  };
}

function ratio(a: number | undefined, b: number | undefined): string {
  return a === undefined || b === undefined ? '-' : `${(a / b).toFixed(2)}x`;
}

function printSummary(sweep: SweepRow[]): void {
  const points = (system: string): SweepPoint[] =>
    sweep
      .filter((r) => r.system === system && r.buildThreads === 1)
      .map((r) => ({ setting: `ef=${r.ef}`, recall: r.recall, qps: r.qps }));
  const ours = ['funnel-hnsw', 'funnel-hnsw-int8'].filter((s) => sweep.some((r) => r.system === s));
  const peers = ['hnswlib-node', 'usearch'].filter((s) => sweep.some((r) => r.system === s));
  if (peers.length === 0) return;
  const table: string[][] = [];
  for (const mine of ours) {
    const a = qpsAtRecall(points(mine), TARGET_RECALL);
    for (const peer of peers) {
      const b = qpsAtRecall(points(peer), TARGET_RECALL);
      const da = describe(a);
      const db = describe(b);
      table.push([
        mine,
        peer,
        da.measured,
        db.measured,
        ratio(a.measured?.qps, b.measured?.qps),
        da.interpolated,
        db.interpolated,
        ratio(a.interpolated?.qps, b.interpolated?.qps),
      ]);
    }
  }
  console.log(
    formatTable(
      `Summary at recall@10 >= ${TARGET_RECALL} (builds on 1 thread): "best measured" = highest-QPS measured ef ` +
        `reaching it; "interpolated" = log(QPS) linear in recall between the two efs bracketing ${TARGET_RECALL}`,
      [
        { header: 'ours', align: 'left' },
        { header: 'peer', align: 'left' },
        { header: 'ours best measured', align: 'left' },
        { header: 'peer best measured', align: 'left' },
        { header: 'ratio' },
        { header: 'ours interpolated', align: 'left' },
        { header: 'peer interpolated', align: 'left' },
        { header: 'ratio' },
      ],
      table,
    ),
  );
  console.log('');
}

function runFiltered(
  opts: AnnBenchOptions,
  ds: Dataset,
  flat: FunnelFlatSubject,
  ours: FunnelHnswSubject,
  oursBuild: BuildReport,
  peer: { subject: HnswlibSubject; build: BuildReport } | undefined,
  rows: BenchRow[],
): void {
  const fq = Math.min(ds.nq, opts.filterQueries);
  const query = ds.query.subarray(0, fq * ds.dim);
  const table: string[][] = [];
  const ratios: string[][] = [];
  for (const [i, fraction] of FILTER_FRACTIONS.entries()) {
    const allowIds = randomSubset(ds.n, fraction, new SeededRandom(opts.seed, 100 + i));
    const allowBits = toBitset(allowIds, ds.n);
    log(`filtered ${percent(fraction)} (${allowIds.length} ids): exact filtered ground truth`);
    const truth = flat.groundTruth(query, opts.k, allowIds);
    const kPrime = Math.min(ds.n, opts.postfilterCap, Math.ceil(opts.k / fraction));
    for (const ef of opts.filterEf) {
      const measured: Record<string, { m: SearchMeasurement; recall: number }> = {};
      const run = (
        key: string,
        system: string,
        setting: string,
        build: BuildReport,
        searcher: QuerySearcher<unknown>,
        planOf?: () => string,
      ): void => {
        log(`filtered ${percent(fraction)} ef=${ef}: ${system} ${setting}`);
        collectGarbage();
        const m = measureSearcher(searcher, fq, opts.k, opts.minSeconds);
        const recall = recallAtK(m.found, truth, 10);
        measured[key] = { m, recall };
        const plan = planOf ? planOf() : '-';
        table.push([percent(fraction), String(allowIds.length), system, setting, plan, String(ef), fixed(recall, 4), grouped(m.qps)]);
        rows.push({
          system,
          setting: `ef=${ef},allowed=${percent(fraction)},${setting}`,
          recall_at_10: round(recall, 4),
          qps: round(m.qps, 1),
          build_s: round(build.seconds, 3),
          table: 'filtered',
          filter: fraction,
          allowed_ids: allowIds.length,
          queries: fq,
          ...(planOf ? { plan } : {}),
        });
      };
      const planned = (s: ReturnType<FunnelHnswSubject['searcher']>) => (): string => {
        const total = s.plans.graph + s.plans.scan;
        if (s.plans.scan === 0) return 'graph';
        if (s.plans.graph === 0) return 'scan';
        return `graph ${Math.round((100 * s.plans.graph) / total)}% / scan ${Math.round((100 * s.plans.scan) / total)}%`;
      };
      const autoBits = ours.searcher(ef, opts.k, { allowBits });
      run('autoBits', ours.name, 'plan=auto,allowBits', oursBuild, autoBits, planned(autoBits));
      const autoIds = ours.searcher(ef, opts.k, { allowIds });
      run('autoIds', ours.name, 'plan=auto,allowIds', oursBuild, autoIds, planned(autoIds));
      const graphBits = ours.searcher(ef, opts.k, { allowBits, plan: 'graph' });
      run('graphBits', ours.name, 'plan=graph,allowBits', oursBuild, graphBits, planned(graphBits));
      if (peer) {
        const filter = (label: number): boolean => hasBit(allowBits, label);
        run('hnswlib', peer.subject.name, 'filter=callback', peer.build, peer.subject.searcher(ef, opts.k, filter));
      }
      run(
        'post',
        `${ours.name}-postfilter`,
        `k'=${kPrime}`,
        oursBuild,
        ours.postFilterSearcher(ef, opts.k, kPrime, allowBits),
      );
      if (peer) {
        const a = measured.autoBits;
        const b = measured.hnswlib;
        ratios.push([
          percent(fraction),
          String(ef),
          grouped(a.m.qps),
          fixed(a.recall, 4),
          grouped(b.m.qps),
          fixed(b.recall, 4),
          ratio(a.m.qps, b.m.qps),
        ]);
      }
    }
  }
  console.log(
    formatTable(
      `Filtered search: first ${fq} queries, one allowed random id subset per fraction (seeded), ` +
        `exact filtered ground truth; plan = what our planner ran; post-filter = unfiltered search for k' ids at ef=max(ef,k') then filter`,
      [
        { header: 'allowed', align: 'left' },
        { header: 'ids' },
        { header: 'system', align: 'left' },
        { header: 'setting', align: 'left' },
        { header: 'plan ran', align: 'left' },
        { header: 'ef' },
        { header: 'recall@10' },
        { header: 'QPS' },
      ],
      table,
    ),
  );
  console.log('');
  if (ratios.length > 0) {
    console.log(
      formatTable(
        'Filtered: ours (plan=auto, allowBits) / hnswlib-node (filter callback on the same bitset)',
        [
          { header: 'allowed', align: 'left' },
          { header: 'ef' },
          { header: 'ours QPS' },
          { header: 'ours recall@10' },
          { header: 'hnswlib QPS' },
          { header: 'hnswlib recall@10' },
          { header: 'QPS ratio' },
        ],
        ratios,
      ),
    );
    console.log('');
  }
}

function main(): void {
  let opts: AnnBenchOptions;
  try {
    opts = parseAnnArgs(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`bench:ann: ${(err as Error).message}\n\n${ANN_USAGE}`);
    process.exitCode = 2;
    return;
  }
  if (opts.help) {
    process.stdout.write(ANN_USAGE);
    return;
  }
  log('loading data');
  const ds = loadDataset(opts);
  printHeader(opts, ds);
  const rows: BenchRow[] = [];
  const params: GraphParams = { M: opts.M, efConstruction: opts.efConstruction, seed: opts.seed };

  log('building flat index');
  const flat = new FunnelFlatSubject(ds.dim, opts.metric, ds.n);
  const flatBuild = flat.build(ds.base);
  log('exact ground truth (flat searchBatch)');
  const gtStart = process.hrtime.bigint();
  const exact = flat.groundTruth(ds.query, opts.k);
  const gtSeconds = Number(process.hrtime.bigint() - gtStart) / 1e9;
  console.log(`exact ground truth: ${gtSeconds.toFixed(2)} s for ${ds.nq} queries (one searchBatch call)`);
  let truth = exact;
  if (ds.givenGt) {
    console.log(`ground-truth check: ${checkGivenGt(exact, ds.givenGt, opts.k)}`);
    truth = ds.givenGt;
  }
  console.log('');

  runFlatTable(opts, ds, flat, flatBuild, truth, rows);

  // Every system is built first and kept; their searches are then timed together, in rounds.
  interface Built extends SweepSubject {
    buildThreads: number;
    build: BuildReport;
    dispose?: () => void;
  }
  const built: Built[] = [];
  /** Builds `subject` on the base vectors, gives it the queries and enters it in the sweep. */
  const buildForSweep = (
    subject: {
      readonly name: string;
      build(base: Float32Array): BuildReport;
      setQueries(query: Float32Array): void;
      searcher(ef: number, k: number): QuerySearcher<unknown>;
    },
    threads: number,
    dispose?: () => void,
  ): BuildReport => {
    log(`${subject.name}: build (${threads} thread${threads > 1 ? 's' : ''})`);
    const build = subject.build(ds.base);
    log(`${subject.name}: built in ${build.seconds.toFixed(2)} s`);
    subject.setQueries(ds.query);
    built.push({ name: subject.name, buildThreads: threads, build, searcher: (ef) => subject.searcher(ef, opts.k), dispose });
    collectGarbage();
    return build;
  };
  const threadCounts = opts.threads > 1 ? [1, opts.threads] : [1];
  let keptOurs: { subject: FunnelHnswSubject; build: BuildReport } | undefined;
  for (const quantization of opts.quantized ? (['none', 'int8'] as const) : (['none'] as const)) {
    for (const threads of threadCounts) {
      const subject = new FunnelHnswSubject(ds.dim, opts.metric, params, quantization, threads);
      const keep = opts.filtered && quantization === 'none' && threads === 1;
      const build = buildForSweep(subject, threads, keep ? undefined : () => subject.dispose());
      if (keep) keptOurs = { subject, build };
    }
  }

  let keptHnswlib: { subject: HnswlibSubject; build: BuildReport } | undefined;
  if (opts.peers.includes('hnswlib')) {
    const subject = new HnswlibSubject(ds.dim, opts.metric, params);
    const build = buildForSweep(subject, 1);
    if (opts.filtered) keptHnswlib = { subject, build };
  }
  if (opts.peers.includes('usearch')) {
    const subject = new UsearchSubject(ds.dim, opts.metric, params);
    buildForSweep(subject, 1, () => subject.dispose());
  }

  const sweep: SweepRow[] = [];
  try {
    const cells = interleavedSweep(built, opts.ef, ds.nq, opts.k, opts.minSeconds, opts.rounds, (name, ef, round) =>
      log(`round ${round + 1}/${opts.rounds}: ${name} ef=${ef}`),
    );
    built.forEach((b, si) =>
      opts.ef.forEach((ef, ei) => {
        const cell = cells[si][ei];
        sweep.push({
          system: b.name,
          buildThreads: b.buildThreads,
          build: b.build,
          ef,
          recall: recallAtK(cell.found, truth, 10),
          recallK: recallAtK(cell.found, truth, opts.k),
          qps: median(cell.qps),
          qpsRounds: cell.qps,
        });
      }),
    );
  } finally {
    for (const b of built) b.dispose?.();
    collectGarbage();
  }

  printMainTable(opts, ds, sweep, rows);
  printSummary(sweep);

  if (keptOurs) runFiltered(opts, ds, flat, keptOurs.subject, keptOurs.build, keptHnswlib, rows);

  const common = {
    dataset: ds.label,
    generated: ds.generated,
    metric: opts.metric,
    n: ds.n,
    dim: ds.dim,
    k: opts.k,
    M: opts.M,
    ef_construction: opts.efConstruction,
    simd: simdLevel(),
    transparent_huge_pages: transparentHugePages(),
  };
  for (const row of rows) console.log(JSON.stringify({ ...row, ...common }));
  const peakMiB = process.resourceUsage().maxRSS / 1024;
  log(`done; peak RSS ${peakMiB.toFixed(0)} MiB`);
}

main();
