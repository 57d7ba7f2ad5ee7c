/**
 * `npm run bench:targeting`: loads a generated catalog's targeting into the native
 * TargetingIndex and measures per-request eligibility latency (match into a reused buffer, with
 * and without a `within` mask of active ads, matchIds, matchAsync) over generated requests, then
 * the direct scan (evaluateTargeting over every ad) on a subset of the requests, the speedup,
 * and checks that both give identical eligible sets. Prints an aligned table, then one JSON
 * line per row. Progress goes to stderr, results to stdout.
 */
import * as os from 'node:os';
import { parseArgs } from 'node:util';
import { generateCatalog, generateRequests } from '../src/catalog/generate';
import { TargetingIndex, type RequestAttributes, type Targeting } from '../src/native/index';
import { evaluateTargeting } from '../src/store/targeting-eval';
import { positiveInt } from './lib/args';
import { fixed, formatTable, grouped, mebibytes } from './lib/table';
import { collectGarbage } from './lib/timing';

const USAGE = `usage: npm run bench:targeting -- [options]

  --ads N             generated ads (default 1000000)
  --requests N        generated requests timed against the index (default 10000)
  --scan-requests N   requests also answered by the direct scan (default 200; the scan reads every ad per request)
  --seed S            seed of the catalog (requests use S + 1) (default 1)
  --help
`;

interface Options {
  ads: number;
  requests: number;
  scanRequests: number;
  seed: number;
}

function parseOptions(argv: string[]): Options | undefined {
  const { values } = parseArgs({
    args: argv,
    options: {
      ads: { type: 'string' },
      requests: { type: 'string' },
      'scan-requests': { type: 'string' },
      seed: { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) return undefined;
  const requests = positiveInt('requests', values.requests, 10_000);
  return {
    ads: positiveInt('ads', values.ads, 1_000_000),
    requests,
    scanRequests: Math.min(requests, positiveInt('scan-requests', values['scan-requests'], 200)),
    seed: positiveInt('seed', values.seed, 1),
  };
}

/** Latency distribution of one measured system, microseconds. */
interface LatencyRow {
  system: string;
  setting: string;
  requests: number;
  p50_us: number;
  p95_us: number;
  p99_us: number;
  max_us: number;
  mean_us: number;
  eligible_mean: number;
  eligible_p50: number;
}

function quantile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

function summarise(system: string, setting: string, latNs: Float64Array, eligible: Float64Array): LatencyRow {
  const lat = Float64Array.from(latNs, (ns) => ns / 1e3).sort();
  const el = Float64Array.from(eligible).sort();
  return {
    system,
    setting,
    requests: lat.length,
    p50_us: quantile(lat, 0.5),
    p95_us: quantile(lat, 0.95),
    p99_us: quantile(lat, 0.99),
    max_us: lat[lat.length - 1],
    mean_us: lat.reduce((a, b) => a + b, 0) / lat.length,
    eligible_mean: el.reduce((a, b) => a + b, 0) / el.length,
    eligible_p50: quantile(el, 0.5),
  };
}

/** Times `run(q)` once per request, in order; `run` returns the eligible count. */
function measureSync(n: number, run: (q: number) => number): { lat: Float64Array; eligible: Float64Array } {
  const lat = new Float64Array(n);
  const eligible = new Float64Array(n);
  for (let q = 0; q < n; q++) {
    const t0 = process.hrtime.bigint();
    const count = run(q);
    lat[q] = Number(process.hrtime.bigint() - t0);
    eligible[q] = count;
  }
  return { lat, eligible };
}

function progress(message: string): void {
  process.stderr.write(`[bench:targeting] ${message}\n`);
}

function sameIds(a: ArrayLike<number>, b: ArrayLike<number>): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

async function main(): Promise<void> {
  let opts: Options | undefined;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n\n${USAGE}`);
    process.exit(2);
  }
  if (opts === undefined) {
    process.stdout.write(USAGE);
    return;
  }
  const { ads, requests: nReq, scanRequests, seed } = opts;

  // Build: rows stream from the generator; only the targeting lists are kept (for the scan peer).
  progress(`generating ${grouped(ads)} ads and loading their targeting`);
  const ix = new TargetingIndex();
  const targetings = new Array<Targeting | undefined>(ads);
  const active = new Uint32Array(Math.ceil(ads / 32));
  let setNs = 0n;
  let untargeted = 0;
  let multi = 0;
  let paused = 0;
  const wallStart = process.hrtime.bigint();
  let id = 0;
  for (const row of generateCatalog({ count: ads, dim: 8, seed })) {
    const t0 = process.hrtime.bigint();
    ix.set(id, row.targeting);
    setNs += process.hrtime.bigint() - t0;
    targetings[id] = row.targeting;
    if (row.targeting === undefined) untargeted++;
    else if (row.targeting.length > 1) multi++;
    if (row.status === 'paused') paused++;
    else active[id >>> 5] |= 1 << (id & 31);
    id++;
  }
  const buildS = Number(setNs) / 1e9;
  const wallS = Number(process.hrtime.bigint() - wallStart) / 1e9;
  const memory = ix.memoryBytes();
  const requests: RequestAttributes[] = generateRequests(nReq, seed + 1);
  collectGarbage();

  console.log('# Targeting eligibility benchmark');
  console.log(
    `data:      GENERATED (src/catalog/generate.ts, seed ${seed}): ${grouped(ads)} ads, ` +
      `${fixed((100 * untargeted) / ads, 1)}% untargeted, ${fixed((100 * multi) / ads, 1)}% with 2-3 conjunctions, ` +
      `${fixed((100 * paused) / ads, 1)}% paused; ${grouped(nReq)} generated requests (seed ${seed + 1})`,
  );
  console.log(`build:     ${fixed(buildS, 2)} s in TargetingIndex.set (${grouped(ads / buildS)} ads/s), ${fixed(wallS, 2)} s with generation`);
  console.log(`memory:    ${mebibytes(memory)} MiB (TargetingIndex.memoryBytes), ${fixed(memory / ads, 1)} bytes/ad`);
  console.log(`machine:   ${os.cpus()[0]?.model ?? 'unknown'}, ${os.cpus().length} cores, load avg ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  if (typeof (globalThis as { gc?: unknown }).gc !== 'function') console.log('warning: node started without --expose-gc');
  console.log('');

  const rows: LatencyRow[] = [];
  const out = new Uint32Array(Math.ceil(ix.capacity / 32));

  // Warm-up: caches, JIT, the thread-local scratch.
  for (let q = 0; q < Math.min(nReq, 500); q++) ix.match(requests[q], { out });

  progress('timing match');
  let m = measureSync(nReq, (q) => ix.match(requests[q], { out }).count);
  rows.push(summarise('TargetingIndex.match', 'out reused', m.lat, m.eligible));

  progress('timing match with within');
  m = measureSync(nReq, (q) => ix.match(requests[q], { out, within: active }).count);
  rows.push(summarise('TargetingIndex.match', 'out reused, within=active', m.lat, m.eligible));

  progress('timing matchIds');
  m = measureSync(nReq, (q) => ix.matchIds(requests[q]).length);
  rows.push(summarise('TargetingIndex.matchIds', 'sorted ids', m.lat, m.eligible));

  progress('timing matchAsync');
  {
    const lat = new Float64Array(nReq);
    const eligible = new Float64Array(nReq);
    for (let q = 0; q < nReq; q++) {
      const t0 = process.hrtime.bigint();
      const r = await ix.matchAsync(requests[q], { out });
      lat[q] = Number(process.hrtime.bigint() - t0);
      eligible[q] = r.count;
    }
    rows.push(summarise('TargetingIndex.matchAsync', 'out reused, awaited one at a time', lat, eligible));
  }
  collectGarbage();

  // The direct scan peer on the first scanRequests requests, checked against the index.
  progress(`direct scan over ${grouped(ads)} ads for ${scanRequests} requests`);
  const scanLat = new Float64Array(scanRequests);
  const scanEligible = new Float64Array(scanRequests);
  let identical = 0;
  let identicalWithin = 0;
  const mismatches: string[] = [];
  for (let q = 0; q < scanRequests; q++) {
    const attrs = requests[q];
    const t0 = process.hrtime.bigint();
    const ids: number[] = [];
    for (let i = 0; i < ads; i++) if (evaluateTargeting(targetings[i], attrs)) ids.push(i);
    scanLat[q] = Number(process.hrtime.bigint() - t0);
    scanEligible[q] = ids.length;
    if (sameIds(ids, ix.matchIds(attrs))) identical++;
    else if (mismatches.length < 5) mismatches.push(JSON.stringify(attrs));
    const activeIds = ids.filter((i) => (active[i >>> 5] >>> (i & 31)) & 1);
    if (sameIds(activeIds, ix.matchIds(attrs, { within: active }))) identicalWithin++;
  }
  rows.push(summarise('direct scan (evaluateTargeting)', `every ad, first ${scanRequests} requests`, scanLat, scanEligible));
  // The index on exactly the scanned requests, for a like-for-like ratio.
  m = measureSync(scanRequests, (q) => ix.match(requests[q], { out }).count);
  const indexOnScanned = summarise('TargetingIndex.match', `out reused, same ${scanRequests} requests`, m.lat, m.eligible);
  rows.push(indexOnScanned);

  const scan = rows[rows.length - 2];
  const speedupP50 = scan.p50_us / indexOnScanned.p50_us;
  const speedupMean = scan.mean_us / indexOnScanned.mean_us;
  const speedupP99 = scan.p99_us / indexOnScanned.p99_us;

  const us = (v: number): string => fixed(v, 1);
  console.log(
    formatTable(
      `Per-request eligibility over ${grouped(ads)} ads (single thread, microseconds)`,
      [
        { header: 'system', align: 'left' },
        { header: 'setting', align: 'left' },
        { header: 'requests' },
        { header: 'p50' },
        { header: 'p95' },
        { header: 'p99' },
        { header: 'max' },
        { header: 'mean' },
        { header: 'eligible mean' },
        { header: 'eligible p50' },
      ],
      rows.map((r) => [
        r.system,
        r.setting,
        grouped(r.requests),
        us(r.p50_us),
        us(r.p95_us),
        us(r.p99_us),
        us(r.max_us),
        us(r.mean_us),
        grouped(r.eligible_mean),
        grouped(r.eligible_p50),
      ]),
    ),
  );
  console.log('');
  console.log(
    `speedup of match over the direct scan on the same ${scanRequests} requests: ` +
      `${fixed(speedupP50, 0)}x at p50, ${fixed(speedupMean, 0)}x on the mean, ${fixed(speedupP99, 0)}x at p99`,
  );
  console.log(
    `identical eligible sets: ${identical}/${scanRequests} requests (matchIds vs scan), ` +
      `${identicalWithin}/${scanRequests} with within=active`,
  );
  for (const s of mismatches) console.log(`MISMATCH: ${s}`);
  console.log('');
  for (const r of rows) {
    console.log(JSON.stringify({ ...r, ads, build_s: buildS, memory_bytes: memory, generated: true }));
  }
  console.log(
    JSON.stringify({
      system: 'summary',
      ads,
      build_s: buildS,
      memory_bytes: memory,
      speedup_p50: speedupP50,
      speedup_mean: speedupMean,
      speedup_p99: speedupP99,
      identical,
      identical_within: identicalWithin,
      scan_requests: scanRequests,
    }),
  );
  if (identical !== scanRequests || identicalWithin !== scanRequests) process.exitCode = 1;
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
