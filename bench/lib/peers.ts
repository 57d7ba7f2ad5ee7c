/**
 * The peer ANN libraries under the benchmark's common shape, each given its fastest accepted
 * input form, converted outside the timed code, and run on one thread:
 * - hnswlib-node takes only plain `number[]` vectors and filters with a JS callback per label;
 * - usearch takes `Float32Array`s and an explicit thread count (1); its search beam
 *   (`expansion_search`) is fixed when an index object is made, so each ef loads the built
 *   index from a temporary file into a new object made with that ef.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { HierarchicalNSW, SearchResult as HnswlibResult, SpaceName } from 'hnswlib-node';
import { Index as UsearchIndex, Matches, MetricKind, ScalarKind } from 'usearch';
import type { Metric } from '../../src/native/index';
import { collectGarbage, QuerySearcher } from './timing';

/** Graph parameters shared by every HNSW-like system in one run. */
export interface GraphParams {
  /** Degree on upper layers; layer 0 keeps 2*M. */
  M: number;
  efConstruction: number;
  /** Seed of the level generator. */
  seed: number;
}

/** What building an index cost. */
export interface BuildReport {
  seconds: number;
  /** `process.memoryUsage().rss` after the build (and a GC) minus before it. */
  rssDeltaBytes: number;
  /** Size of the index: the library's own count, or its serialized size where it has none (see `indexBytesSource`). */
  indexBytes: number;
  indexBytesSource: 'memoryBytes' | 'serialized';
}

/** hnswlib-node's space for a metric: its `ip` distance is 1 - dot, its `cosine` normalises both sides. */
export function hnswlibSpace(metric: Metric): SpaceName {
  return metric === 'cos' ? 'cosine' : metric;
}

/** usearch's metric kind: `ip` distance is 1 - dot, `cos` is 1 - cosine, `l2sq` is squared L2. */
export function usearchMetric(metric: Metric): MetricKind {
  switch (metric) {
    case 'ip':
      return MetricKind.IP;
    case 'cos':
      return MetricKind.Cos;
    case 'l2':
      return MetricKind.L2sq;
  }
}

/** Rows of a row-major matrix as plain arrays (hnswlib-node accepts nothing else). */
export function toRows(data: Float32Array, dim: number, first = 0, count = data.length / dim - first): number[][] {
  const rows = new Array<number[]>(count);
  for (let r = 0; r < count; r++) {
    const base = (first + r) * dim;
    const row = new Array<number>(dim);
    for (let j = 0; j < dim; j++) row[j] = data[base + j];
    rows[r] = row;
  }
  return rows;
}

/** Per-row views of a row-major matrix, so a search loop does no slicing. */
export function rowViews(data: Float32Array, dim: number): Float32Array[] {
  const views = new Array<Float32Array>(data.length / dim);
  for (let r = 0; r < views.length; r++) views[r] = data.subarray(r * dim, (r + 1) * dim);
  return views;
}

function tempFile(name: string): string {
  return path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'funnel-bench-')), name);
}

function removeTemp(file: string): void {
  fs.rmSync(path.dirname(file), { recursive: true, force: true });
}

const HNSWLIB_CHUNK_ROWS = 4096;

/** hnswlib-node's HierarchicalNSW, built by addPoint in id order; labels are row numbers. */
export class HnswlibSubject {
  /** System name printed in tables and JSON rows. */
  readonly name = 'hnswlib-node';
  private readonly index: HierarchicalNSW;
  private queryRows: number[][] = [];

  /** An empty index of dimension `dim`; nothing is allocated until {@link build}. */
  constructor(
    private readonly dim: number,
    metric: Metric,
    private readonly params: GraphParams,
  ) {
    this.index = new HierarchicalNSW(hnswlibSpace(metric), dim);
  }

  /** Adds every row of `base` (label = row number), timing only the addPoint calls. */
  build(base: Float32Array): BuildReport {
    const n = base.length / this.dim;
    collectGarbage();
    const rssBefore = process.memoryUsage().rss;
    this.index.initIndex(n, this.params.M, this.params.efConstruction, this.params.seed);
    let elapsed = 0n;
    for (let first = 0; first < n; first += HNSWLIB_CHUNK_ROWS) {
      const rows = toRows(base, this.dim, first, Math.min(HNSWLIB_CHUNK_ROWS, n - first));
      const start = process.hrtime.bigint();
      for (let r = 0; r < rows.length; r++) this.index.addPoint(rows[r], first + r);
      elapsed += process.hrtime.bigint() - start;
    }
    collectGarbage();
    const rssDeltaBytes = process.memoryUsage().rss - rssBefore;
    const file = tempFile('hnswlib.bin');
    try {
      this.index.writeIndexSync(file);
      const indexBytes = fs.statSync(file).size;
      return { seconds: Number(elapsed) / 1e9, rssDeltaBytes, indexBytes, indexBytesSource: 'serialized' };
    } finally {
      removeTemp(file);
    }
  }

  /** Converts the queries once, outside any timed loop. */
  setQueries(query: Float32Array): void {
    this.queryRows = toRows(query, this.dim);
  }

  /** Searches query q for k labels at beam width ef, optionally through a label filter callback. */
  searcher(ef: number, k: number, filter?: (label: number) => boolean): QuerySearcher<HnswlibResult> {
    this.index.setEf(ef);
    const rows = this.queryRows;
    const index = this.index;
    return filter
      ? { run: (q) => index.searchKnn(rows[q], k, filter), ids: (r) => r.neighbors }
      : { run: (q) => index.searchKnn(rows[q], k), ids: (r) => r.neighbors };
  }
}

/** usearch's Index with f32 storage; keys are row numbers. */
export class UsearchSubject {
  /** System name printed in tables and JSON rows. */
  readonly name = 'usearch';
  private readonly metric: MetricKind;
  private file: string | undefined;
  private queryViews: Float32Array[] = [];

  /** Nothing is allocated until {@link build}. */
  constructor(
    private readonly dim: number,
    metric: Metric,
    private readonly params: GraphParams,
  ) {
    this.metric = usearchMetric(metric);
  }

  private make(expansionSearch: number): UsearchIndex {
    return new UsearchIndex({
      dimensions: this.dim,
      metric: this.metric,
      quantization: ScalarKind.F32,
      connectivity: this.params.M,
      expansion_add: this.params.efConstruction,
      expansion_search: expansionSearch,
      multi: false,
    });
  }

  /** Adds all rows in one call on one thread, then saves the index to a temporary file for {@link searcher}. */
  build(base: Float32Array): BuildReport {
    const n = base.length / this.dim;
    const keys = new BigUint64Array(n);
    for (let i = 0; i < n; i++) keys[i] = BigInt(i);
    collectGarbage();
    const rssBefore = process.memoryUsage().rss;
    let built: UsearchIndex | undefined = this.make(64);
    const start = process.hrtime.bigint();
    built.add(keys, base, 1);
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    collectGarbage();
    const rssDeltaBytes = process.memoryUsage().rss - rssBefore;
    this.file = tempFile('usearch.bin');
    built.save(this.file);
    built = undefined;
    collectGarbage();
    return { seconds, rssDeltaBytes, indexBytes: fs.statSync(this.file).size, indexBytesSource: 'serialized' };
  }

  /** Keeps per-row views of the queries (no copies). */
  setQueries(query: Float32Array): void {
    this.queryViews = rowViews(query, this.dim);
  }

  /** Loads the built index into a new object with expansion_search = ef and searches on 1 thread; drop the previous searcher first. */
  searcher(ef: number, k: number): QuerySearcher<Matches> {
    if (this.file === undefined) throw new Error('usearch: searcher() before build()');
    collectGarbage();
    const index = this.make(ef);
    index.load(this.file);
    const views = this.queryViews;
    return { run: (q) => index.search(views[q], k, 1), ids: (m) => Array.from(m.keys, Number) };
  }

  /** Deletes the temporary index file. */
  dispose(): void {
    if (this.file !== undefined) removeTemp(this.file);
    this.file = undefined;
  }
}
