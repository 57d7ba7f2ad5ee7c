/** Command line of `npm run bench:ann` (node:util parseArgs; no dependency). */
import { parseArgs } from 'node:util';
import type { Metric } from '../../src/native/index';

/** Validated options of the ANN benchmark. */
export interface AnnBenchOptions {
  /** Files to read, or undefined when `generate` is set. */
  base?: string;
  query?: string;
  gt?: string;
  metric: Metric;
  /** Base vectors of a generated Gaussian mixture (instead of files). */
  generate?: number;
  /** Dimension, clusters and query count of the generated mixture. */
  dim: number;
  clusters: number;
  genQueries: number;
  /** Seed of the generator, the filter subsets and the graphs' level generators. */
  seed: number;
  k: number;
  M: number;
  efConstruction: number;
  /** Search beam widths of the unfiltered table, ascending. */
  ef: number[];
  /** Build threads of our index; peers always build on one. */
  threads: number;
  filtered: boolean;
  /** Beam widths of the filtered table, ascending. */
  filterEf: number[];
  /** Queries used by the filtered table (the first ones). */
  filterQueries: number;
  /** Largest k' of post-filtering (k' = k / allowed fraction otherwise). */
  postfilterCap: number;
  quantized: boolean;
  maxQueries?: number;
  skipPeers: boolean;
  /** Peers to build and compare against (subset of PEERS); empty with --skip-peers. */
  peers: string[];
  /** Least time of timed passes per measured row, seconds. */
  minSeconds: number;
  /** Timed rounds over every (system, ef) of the unfiltered table, interleaved; QPS is their median. */
  rounds: number;
  help: boolean;
}

/** Usage text printed by --help and after a command-line error. */
export const ANN_USAGE = `usage: npm run bench:ann -- (--base B.fvecs --query Q.fvecs [--gt G.ivecs] | --generate N) [options]

data
  --base FILE             base vectors (.fvecs)
  --query FILE            query vectors (.fvecs)
  --gt FILE               exact ground truth (.ivecs, first k columns used); default: computed exactly
  --generate N            generated Gaussian mixture of N base vectors instead of files (cached in bench/.cache)
  --dim D                 generated dimension (default 128)
  --clusters C            generated mixture components (default 1000)
  --gen-queries Q         generated queries (default 1000)
  --seed S                seed of generator, filter subsets and graphs (default 42)
  --max-queries N         use only the first N queries
search
  --metric ip|cos|l2      (default l2)
  --k K                   neighbours per query, >= 10 (default 10)
  --M M                   graph degree (default 16)
  --ef-construction E     build beam width (default 200)
  --ef LIST               search beam widths (default 16,32,64,128,256)
  --threads T             build threads of our index (default 1; peers build on 1; T > 1 reports both)
  --quantized             add our int8 index
  --skip-peers            only our indexes
  --peers LIST            peers to compare against: hnswlib, usearch (default both; at 1M usearch's
                          build alone takes about 16 minutes here)
  --min-seconds S         least timed seconds per row (default 1)
  --rounds R              unfiltered QPS: R timed rounds over every system and ef after all builds,
                          alternating the systems' order; the median is reported (default 3)
filtered
  --filtered              add the filtered table (allowed fractions 50%, 10%, 1%, 0.1%)
  --filter-ef LIST        beam widths of the filtered table (default 64,256)
  --filter-queries N      queries of the filtered table (default 200)
  --postfilter-cap N      largest k' of post-filtering (default 1000)
`;

/** `raw` as a positive safe integer, `fallback` when absent; throws naming `--name` otherwise. */
export function positiveInt(name: string, raw: string | undefined, fallback: number): number {
  if (raw === undefined) return fallback;
  const value = Number(raw);
  if (!/^\d+$/.test(raw.trim()) || !Number.isSafeInteger(value) || value <= 0) {
    throw new Error(`--${name} must be a positive integer, got "${raw}"`);
  }
  return value;
}

function intList(name: string, raw: string | undefined, fallback: number[]): number[] {
  if (raw === undefined) return fallback;
  const values = raw.split(',').map((part) => positiveInt(name, part, 0));
  return [...new Set(values)].sort((a, b) => a - b);
}

/** The peers bench:ann knows. */
export const PEERS = ['hnswlib', 'usearch'] as const;

function peerList(raw: string | undefined): string[] {
  if (raw === undefined) return [...PEERS];
  const names = [...new Set(raw.split(',').map((s) => s.trim()).filter((s) => s !== ''))];
  for (const n of names) if (!(PEERS as readonly string[]).includes(n)) throw new Error(`--peers: unknown peer "${n}" (known: ${PEERS.join(', ')})`);
  if (names.length === 0) throw new Error('--peers needs at least one name (or use --skip-peers)');
  return names;
}

/** Parses and validates argv (without node and script); throws an Error naming the offending option. */
export function parseAnnArgs(argv: readonly string[]): AnnBenchOptions {
  const { values } = parseArgs({
    args: [...argv],
    strict: true,
    allowPositionals: false,
    options: {
      base: { type: 'string' },
      query: { type: 'string' },
      gt: { type: 'string' },
      metric: { type: 'string' },
      generate: { type: 'string' },
      dim: { type: 'string' },
      clusters: { type: 'string' },
      'gen-queries': { type: 'string' },
      seed: { type: 'string' },
      k: { type: 'string' },
      M: { type: 'string' },
      'ef-construction': { type: 'string' },
      ef: { type: 'string' },
      threads: { type: 'string' },
      filtered: { type: 'boolean' },
      'filter-ef': { type: 'string' },
      'filter-queries': { type: 'string' },
      'postfilter-cap': { type: 'string' },
      quantized: { type: 'boolean' },
      'max-queries': { type: 'string' },
      'skip-peers': { type: 'boolean' },
      peers: { type: 'string' },
      'min-seconds': { type: 'string' },
      rounds: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const help = values.help === true;
  const metric = values.metric ?? 'l2';
  if (metric !== 'l2' && metric !== 'ip' && metric !== 'cos') {
    throw new Error(`--metric must be one of ip, cos, l2, got "${metric}"`);
  }
  const generate = values.generate === undefined ? undefined : positiveInt('generate', values.generate, 0);
  if (!help) {
    if (generate !== undefined && (values.base !== undefined || values.query !== undefined)) {
      throw new Error('--generate cannot be combined with --base/--query');
    }
    if (generate === undefined && (values.base === undefined || values.query === undefined)) {
      throw new Error('give --base and --query, or --generate N');
    }
    if (generate !== undefined && values.gt !== undefined) {
      throw new Error('--gt cannot be combined with --generate (ground truth is computed)');
    }
  }
  const k = positiveInt('k', values.k, 10);
  if (k < 10) throw new Error(`--k must be at least 10 (recall@10 is reported), got ${k}`);
  const seedRaw = values.seed ?? '42';
  if (!/^-?\d+$/.test(seedRaw.trim())) throw new Error(`--seed must be an integer, got "${seedRaw}"`);
  const minSeconds = values['min-seconds'] === undefined ? 1 : Number(values['min-seconds']);
  if (!Number.isFinite(minSeconds) || minSeconds <= 0) {
    throw new Error(`--min-seconds must be a positive number, got "${values['min-seconds']}"`);
  }
  return {
    base: values.base,
    query: values.query,
    gt: values.gt,
    metric,
    generate,
    dim: positiveInt('dim', values.dim, 128),
    clusters: positiveInt('clusters', values.clusters, 1000),
    genQueries: positiveInt('gen-queries', values['gen-queries'], 1000),
    seed: Number(seedRaw),
    k,
    M: positiveInt('M', values.M, 16),
    efConstruction: positiveInt('ef-construction', values['ef-construction'], 200),
    ef: intList('ef', values.ef, [16, 32, 64, 128, 256]),
    threads: positiveInt('threads', values.threads, 1),
    filtered: values.filtered === true,
    filterEf: intList('filter-ef', values['filter-ef'], [64, 256]),
    filterQueries: positiveInt('filter-queries', values['filter-queries'], 200),
    postfilterCap: positiveInt('postfilter-cap', values['postfilter-cap'], 1000),
    quantized: values.quantized === true,
    maxQueries: values['max-queries'] === undefined ? undefined : positiveInt('max-queries', values['max-queries'], 0),
    skipPeers: values['skip-peers'] === true,
    peers: values['skip-peers'] === true ? [] : peerList(values.peers),
    minSeconds,
    rounds: positiveInt('rounds', values.rounds, 3),
    help,
  };
}
