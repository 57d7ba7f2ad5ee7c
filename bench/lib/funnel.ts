/** Our native indexes under the benchmark's common shape (the only bench module that loads the addon). */
import { FlatIndex, HnswIndex, Metric, SearchOptions, SearchResult } from '../../src/native/index';
import { BuildReport, GraphParams, rowViews } from './peers';
import { IdRows } from './recall';
import { collectGarbage, QuerySearcher } from './timing';

/** A searcher of ours that also counts, over its untimed pass, which plan answered each query. */
export interface PlannedSearcher extends QuerySearcher<SearchResult> {
  plans: Record<SearchResult['plan'], number>;
}

function denseIds(n: number): Uint32Array {
  const ids = new Uint32Array(n);
  for (let i = 0; i < n; i++) ids[i] = i;
  return ids;
}

/** Our HNSW index, float or int8, built with addBatch on `buildThreads` threads; ids are row numbers. */
export class FunnelHnswSubject {
  /** `funnel-hnsw` or `funnel-hnsw-int8`. */
  readonly name: string;
  private index: HnswIndex | undefined;
  private queryViews: Float32Array[] = [];

  /** Nothing is allocated until {@link build}. */
  constructor(
    private readonly dim: number,
    private readonly metric: Metric,
    private readonly params: GraphParams,
    private readonly quantization: 'none' | 'int8',
    /** Threads of addBatch. */
    readonly buildThreads: number,
  ) {
    this.name = quantization === 'int8' ? 'funnel-hnsw-int8' : 'funnel-hnsw';
  }

  /** Adds all rows with one addBatch call (capacity preset to n), timing only that call. */
  build(base: Float32Array): BuildReport {
    const n = base.length / this.dim;
    const ids = denseIds(n);
    collectGarbage();
    const rssBefore = process.memoryUsage().rss;
    const index = new HnswIndex({
      dim: this.dim,
      metric: this.metric,
      M: this.params.M,
      efConstruction: this.params.efConstruction,
      capacity: n,
      quantization: this.quantization,
      seed: this.params.seed,
    });
    const start = process.hrtime.bigint();
    index.addBatch(ids, base, this.buildThreads);
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    collectGarbage();
    this.index = index;
    return {
      seconds,
      rssDeltaBytes: process.memoryUsage().rss - rssBefore,
      indexBytes: index.memoryBytes(),
      indexBytesSource: 'memoryBytes',
    };
  }

  /** Keeps per-row views of the queries (no copies). */
  setQueries(query: Float32Array): void {
    this.queryViews = rowViews(query, this.dim);
  }

  private built(): HnswIndex {
    if (this.index === undefined) throw new Error(`${this.name}: searcher() before build()`);
    return this.index;
  }

  /** Synchronous search of query q for k ids at beam width ef, with optional filter and plan. */
  searcher(ef: number, k: number, filter: Omit<SearchOptions, 'ef'> = {}): PlannedSearcher {
    const index = this.built();
    const views = this.queryViews;
    const options: SearchOptions = { ...filter, ef };
    const plans = { graph: 0, scan: 0 };
    return {
      plans,
      run: (q) => index.search(views[q], k, options),
      ids: (r) => {
        plans[r.plan]++;
        return r.ids;
      },
    };
  }

  /**
   * Post-filtering: an unfiltered search for `kPrime` ids at beam width max(ef, kPrime), then the
   * first k ids whose bit is set in `allowBits` (same layout as SearchOptions.allowBits); timed whole.
   */
  postFilterSearcher(ef: number, k: number, kPrime: number, allowBits: Uint32Array): QuerySearcher<Uint32Array> {
    const index = this.built();
    const views = this.queryViews;
    const options: SearchOptions = { ef: Math.max(ef, kPrime) };
    return {
      run: (q) => {
        const ids = index.search(views[q], kPrime, options).ids;
        const kept = new Uint32Array(k);
        let m = 0;
        for (let i = 0; i < ids.length && m < k; i++) {
          const id = ids[i];
          if ((allowBits[id >>> 5] >>> (id & 31)) & 1) kept[m++] = id;
        }
        return kept.subarray(0, m);
      },
      ids: (r) => r,
    };
  }

  /** Drops our reference to the index so the next GC can free it. */
  dispose(): void {
    this.index = undefined;
  }
}

/** Our exact index: ground truth, and the scan bandwidth figures. */
export class FunnelFlatSubject {
  /** System name printed in tables and JSON rows. */
  readonly name = 'funnel-flat';
  private readonly index: FlatIndex;

  /** An empty exact index with capacity for `capacity` ids. */
  constructor(
    private readonly dim: number,
    metric: Metric,
    capacity: number,
  ) {
    this.index = new FlatIndex({ dim, metric, capacity });
  }

  /** Adds all rows with one addBatch call; returns its seconds. */
  build(base: Float32Array): number {
    const ids = denseIds(base.length / this.dim);
    const start = process.hrtime.bigint();
    this.index.addBatch(ids, base);
    return Number(process.hrtime.bigint() - start) / 1e9;
  }

  /** Exact top-k ids of every query (one searchBatch call), optionally among `allowIds` only. */
  groundTruth(query: Float32Array, k: number, allowIds?: Uint32Array): IdRows {
    const result = this.index.searchBatch(query, k, allowIds ? { allowIds } : {});
    return { rows: query.length / this.dim, cols: result.k, data: result.ids };
  }

  /** Single-query exact search of query q. */
  searcher(query: Float32Array, k: number): QuerySearcher<SearchResult> {
    const index = this.index;
    const views = rowViews(query, this.dim);
    return { run: (q) => index.search(views[q], k), ids: (r) => r.ids };
  }

  /**
   * Exact search of all queries in searchBatch calls of `batch` queries each: `collect` runs one
   * pass keeping the ids (use it as the warm-up), `pass` runs one pass and keeps nothing (time it).
   */
  batchSearcher(query: Float32Array, k: number, batch: number): { collect(): IdRows; pass(): void } {
    const index = this.index;
    const dim = this.dim;
    const nq = query.length / dim;
    const slices: Float32Array[] = [];
    for (let first = 0; first < nq; first += batch) {
      slices.push(query.subarray(first * dim, Math.min(nq, first + batch) * dim));
    }
    return {
      collect: () => {
        const data = new Uint32Array(nq * k);
        let row = 0;
        for (const slice of slices) {
          const result = index.searchBatch(slice, k);
          const rows = slice.length / dim;
          for (let r = 0; r < rows; r++) data.set(result.ids.subarray(r * result.k, r * result.k + k), (row + r) * k);
          row += rows;
        }
        return { rows: nq, cols: k, data };
      },
      pass: () => {
        for (const slice of slices) index.searchBatch(slice, k);
      },
    };
  }
}
