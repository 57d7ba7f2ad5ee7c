/**
 * The only importer of the native addon (native/build/Release/funnel_native.node).
 *
 * Conventions shared by every call:
 * - vectors are Float32Array (any byteOffset); a batch is `count * dim` floats, row-major;
 * - ids are 32-bit unsigned internal ids chosen by the caller (the store allocates them densely);
 * - scores are "higher is better": `ip` = dot product, `cos` = cosine similarity,
 *   `l2` = minus the squared Euclidean distance; results come best first;
 * - every failure is an `Error` whose `code` is one of {@link NativeErrorCode}.
 */
import * as path from 'node:path';

/** Distance function of an index. */
export type Metric = 'ip' | 'cos' | 'l2';
/** Instruction set of the kernels in use. */
export type SimdLevel = 'scalar' | 'avx2' | 'avx512' | 'neon';
/** How a filtered query is answered: `auto` lets the planner choose per query. */
export type SearchPlan = 'auto' | 'scan' | 'graph';

/** The `code` of every Error the addon throws. */
export type NativeErrorCode =
  | 'ERR_INVALID_ARG'
  | 'ERR_DIMENSION_MISMATCH'
  | 'ERR_NON_FINITE'
  | 'ERR_K_OUT_OF_RANGE'
  | 'ERR_UNKNOWN_ID'
  | 'ERR_CORRUPT_INDEX'
  | 'ERR_IO';

/** Options of a new HNSW index. */
export interface HnswOptions {
  dim: number;
  metric: Metric;
  /** Graph degree on upper layers (level 0 keeps 2*M). Default 16. */
  M?: number;
  /** Beam width while building. Default 200. */
  efConstruction?: number;
  /** Initial id capacity (grows on demand). Default 1024. */
  capacity?: number;
  /** `int8` keeps an int8 copy for traversal and re-ranks the best candidates in float. Default `none`. */
  quantization?: 'none' | 'int8';
  /** Seed of the level generator, for reproducible graphs. Default 42. */
  seed?: number;
}

/** Options of one search. */
export interface SearchOptions {
  /** Beam width at level 0 (raised to k when lower). Default: the index's `ef`. */
  ef?: number;
  /** Only these ids may be returned: sorted ascending, no duplicates. */
  allowIds?: Uint32Array;
  /** Only ids whose bit is set may be returned: bit `i` is `(allowBits[i >> 5] >>> (i & 31)) & 1`. */
  allowBits?: Uint32Array;
  /** Planner override for filtered queries. Default `auto`. */
  plan?: SearchPlan;
  /** Quantized indexes: how many candidates are re-ranked in float. Default max(ef, 2k). */
  rerank?: number;
}

/** One query's answer: `ids[i]` has `scores[i]`, best first; shorter than k only when fewer ids are allowed. */
export interface SearchResult {
  ids: Uint32Array;
  scores: Float32Array;
  /** What the planner did: `graph` (unfiltered or in-graph filtered traversal) or `scan` (exact scan of allowed ids). */
  plan: 'graph' | 'scan';
  /** Number of distance evaluations spent. */
  visited: number;
}

/** Answers of `count` queries: row `q` is `ids[q*k .. q*k+k)`; missing slots hold id 0xFFFFFFFF and score -Infinity. */
export interface BatchResult {
  k: number;
  ids: Uint32Array;
  scores: Float32Array;
}

/** Operations common to both index kinds. */
export interface VectorIndex {
  readonly dim: number;
  readonly metric: Metric;
  /** Number of live (not removed) ids. */
  readonly size: number;
  /** One more than the largest id ever stored. */
  readonly capacity: number;
  /** Inserts or replaces the vector of `id`. */
  add(id: number, vector: Float32Array): void;
  /** Inserts or replaces `ids.length` vectors (`vectors.length == ids.length * dim`); `threads` > 1 builds in parallel. */
  addBatch(ids: Uint32Array, vectors: Float32Array, threads?: number): void;
  /** Same as addBatch, off the event loop. */
  addBatchAsync(ids: Uint32Array, vectors: Float32Array, threads?: number): Promise<void>;
  /** Removes `id`; a removed id is never returned. Throws ERR_UNKNOWN_ID if absent. */
  remove(id: number): void;
  has(id: number): boolean;
  /** Copy of the stored vector of `id` (normalised for `cos`). */
  getVector(id: number): Float32Array;
  /** Copies the vectors of `ids` into `out` (row-major, `ids.length * dim` floats, zeros for absent ids); returns how many were present. */
  gatherVectors(ids: Uint32Array, out: Float32Array): number;
  search(query: Float32Array, k: number, options?: SearchOptions): SearchResult;
  searchAsync(query: Float32Array, k: number, options?: SearchOptions): Promise<SearchResult>;
  searchBatch(queries: Float32Array, k: number, options?: SearchOptions): BatchResult;
  searchBatchAsync(queries: Float32Array, k: number, options?: SearchOptions): Promise<BatchResult>;
  /** Writes the index to one file (atomically: temp file, fsync, rename); `tag` is kept for the caller (e.g. a change sequence number). */
  save(file: string, options?: { tag?: number }): void;
  /** save() on the thread pool: searches may run meanwhile; the caller keeps writes (add, remove) out until it settles. */
  saveAsync(file: string, options?: { tag?: number }): Promise<void>;
  /** The `tag` given to save() of the file this index was loaded from; 0 otherwise. */
  readonly tag: number;
  /** Approximate bytes held by the index. */
  memoryBytes(): number;
}

/** HNSW graph index with in-graph filtering. */
export interface HnswIndex extends VectorIndex {
  /** Default beam width of searches. */
  ef: number;
  readonly M: number;
  readonly efConstruction: number;
  readonly quantization: 'none' | 'int8';
  /** True when the index is served from a read-only memory map (load with mmap). */
  readonly mapped: boolean;
}

/** Exact index: SIMD scan, batched so that many queries share one pass over memory. */
export type FlatIndex = VectorIndex;

interface NativeModule {
  simdLevel(): SimdLevel;
  availableSimdLevels(): SimdLevel[];
  kernel(level: SimdLevel, name: 'dot' | 'l2sq' | 'cos', a: Float32Array, b: Float32Array): number;
  kernelRows(level: SimdLevel, name: 'dot' | 'l2sq', query: Float32Array, rows: Float32Array): Float32Array;
  kernelI8(level: SimdLevel, a: Int8Array, b: Int8Array): number;
  readBandwidth(bytes: number, reps: number): number;
  /** Absent from an addon built before it (the Diversifier then runs its JavaScript loop). */
  mmr?(level: SimdLevel | undefined, rows: Float32Array, dim: number, m: number, scores: Float64Array, lambda: number, want: number, order: Uint32Array): number;
  andCount(a: Uint32Array, b: Uint32Array, out: Uint32Array): number;
  setParentDeathSignal(): boolean;
  HnswIndex: {
    new (options: HnswOptions): HnswIndex;
    /** `mmap`: share the file's pages copy-on-write; `verify` (default true): check section checksums. */
    load(file: string, options?: { mmap?: boolean; verify?: boolean }): HnswIndex;
  };
  FlatIndex: {
    new (options: { dim: number; metric: Metric; capacity?: number }): FlatIndex;
    load(file: string, options?: { verify?: boolean }): FlatIndex;
  };
}

function loadAddon(): NativeModule {
  const root = path.resolve(__dirname, '..', '..', '..');
  const candidates = [
    path.join(root, 'native', 'build', 'Release', 'funnel_native.node'),
    path.resolve(__dirname, '..', '..', 'native', 'build', 'Release', 'funnel_native.node'),
  ];
  let lastError: unknown;
  for (const file of candidates) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      return require(file) as NativeModule;
    } catch (err) {
      lastError = err;
      if ((err as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw err;
    }
  }
  throw new Error(`funnel native addon not built (run npm install): ${String(lastError)}`);
}

const addon = loadAddon();

/** Instruction set chosen at load (CPUID, or FUNNEL_SIMD=scalar|avx2|avx512|neon). */
export const simdLevel = (): SimdLevel => addon.simdLevel();
/** Instruction sets compiled in and supported by this CPU, scalar first. */
export const availableSimdLevels = (): SimdLevel[] => addon.availableSimdLevels();
/** HNSW graph index: `new HnswIndex({dim, metric})` or `HnswIndex.load(file)`. */
export const HnswIndex = addon.HnswIndex;
/** Exact index: `new FlatIndex({dim, metric})` or `FlatIndex.load(file)`. */
export const FlatIndex = addon.FlatIndex;

/** Dot products of `query` with each of the `rows.length / query.length` consecutive rows, with the active SIMD kernels. */
export function dotRows(query: Float32Array, rows: Float32Array): Float32Array {
  return addon.kernelRows(addon.simdLevel(), 'dot', query, rows);
}

/** The native greedy MMR (see {@link mmrSelect}), with its instruction set forced or active (`undefined`). */
export type MmrFunction = (level: SimdLevel | undefined, rows: Float32Array, dim: number, m: number, scores: Float64Array, lambda: number, want: number, order: Uint32Array) => number;

const nativeMmr: MmrFunction | undefined = typeof addon.mmr === 'function' ? addon.mmr : undefined;

/**
 * Greedy maximal marginal relevance over the first `m` rows of `rows` (`dim` floats each,
 * row-major; normalised to unit length in place, a zero or non-finite-length row to zeros) with
 * relevance `scores[0..m)`, on the calling thread (a few tens of microseconds at 150 rows of 64):
 * writes min(want, m) row indices to `order` in pick order and returns that number. Step one takes
 * the best lambda * score / max score; each later one the best lambda * score / max score -
 * (1 - lambda) * (max dot with the rows taken), ties to the lower index; the dots come from the
 * active SIMD kernel over all m rows per step. Undefined when the addon predates it.
 */
export const mmrSelect: ((rows: Float32Array, dim: number, m: number, scores: Float64Array, lambda: number, want: number, order: Uint32Array) => number) | undefined =
  nativeMmr === undefined ? undefined : (rows, dim, m, scores, lambda, want, order) => nativeMmr(undefined, rows, dim, m, scores, lambda, want, order);

/**
 * `out[i] = a[i] & b[i]` for every word of `out` (a word past the end of `a` or `b` counts as 0),
 * on the calling thread (about 5 us for 1M bits with AVX2, twice that without); returns the number of bits set in `out`.
 * `out` may be `a` or `b`, but must not overlap either in part.
 */
export const andCount: (a: Uint32Array, b: Uint32Array, out: Uint32Array) => number = addon.andCount;

/** Has the kernel SIGKILL this process when its parent dies (Linux: prctl PR_SET_PDEATHSIG; false elsewhere). */
export const setParentDeathSignal: () => boolean = addon.setParentDeathSignal;

/** Test and benchmark hooks: one kernel call at a forced instruction set, memory bandwidth. */
export const internals = {
  /** One f32 kernel (`dot`, `l2sq` = squared L2, `cos` = cosine similarity) at `level`. */
  kernel: addon.kernel,
  /** One query against `rows.length / query.length` consecutive rows at `level`. */
  kernelRows: addon.kernelRows,
  /** int8 dot product at `level`, exact int32 result. */
  kernelI8: addon.kernelI8,
  /** Single-thread sequential read bandwidth in bytes/s over a buffer of `bytes`, best of `reps`. */
  readBandwidth: addon.readBandwidth,
  /** The native MMR at `level` (undefined: the active one); absent when the addon predates it. */
  mmr: nativeMmr,
};

// ---------------------------------------------------------------------------------------------
// Targeting index (CONTRACT section 1): which ads a request's attributes satisfy, as a bitset.

/** One attribute's predicate: `any_of` holds when the request's values intersect it (a request without the attribute fails), `none_of` when they do not (a request without it passes); at least one of the two. */
export interface Predicate {
  any_of?: readonly string[];
  none_of?: readonly string[];
}
/** Attribute name -> predicate; holds when ALL its predicates hold (`{}` always holds). */
export type Conjunction = Readonly<Record<string, Predicate>>;
/** An ad's targeting: a non-empty list of conjunctions, matched when ANY holds; absent (`undefined`) means everyone. */
export type Targeting = readonly Conjunction[];
/** A request's attributes: name -> values (order and repeats do not matter; `[]` or an absent name = no values). */
export type RequestAttributes = Readonly<Record<string, readonly string[] | undefined>>;

/** Options of a targeting match. */
export interface TargetingMatchOptions {
  /** Only ads whose bit is set may match (e.g. the active ads); ids past its end may not. Not modified; must not overlap `out`. */
  within?: Uint32Array;
  /** Buffer to fill and return as `bits` (at least `ceil(capacity / 32)` words; the rest is zeroed), so a hot path allocates nothing; matchAsync fills it on the pool thread (the JS thread neither copies nor clears it). */
  out?: Uint32Array;
}

/** A targeting answer: bit `i` of `bits` (`(bits[i >> 5] >>> (i & 31)) & 1`) is set when ad `i` matches; `count` set bits. */
export interface TargetingMatch {
  bits: Uint32Array;
  count: number;
}

/**
 * DNF targeting index over 32-bit internal ad ids (below 2^31). `bits` answers are in the
 * layout `allowBits` of the vector indexes takes. Strings are compared exactly as UTF-8 (a lone
 * UTF-16 surrogate becomes U+FFFD, as in any UTF-8 encoding).
 */
export interface TargetingIndex {
  /** Number of ads set. */
  readonly size: number;
  /** One more than the largest id ever set (never shrinks); answers hold `ceil(capacity / 32)` words. */
  readonly capacity: number;
  /** Write epoch: moves on every set() that passes its checks and every remove() that removes, on nothing else; a match begun after reading it describes the index it read if it reads the same after the match. */
  readonly epoch: number;
  /** Sets or replaces the targeting of `id` (`undefined`/`null` = everyone); ERR_INVALID_ARG names the bad part and changes nothing. */
  set(id: number, targeting: Targeting | undefined | null): void;
  /** Removes `id`; ERR_UNKNOWN_ID if it was never set or already removed. */
  remove(id: number): void;
  has(id: number): boolean;
  /** The ads whose targeting the request satisfies, on the calling thread. */
  match(attrs: RequestAttributes, options?: TargetingMatchOptions): TargetingMatch;
  /** The matching ad ids, ascending. */
  matchIds(attrs: RequestAttributes, options?: Pick<TargetingMatchOptions, 'within'>): Uint32Array;
  /** Same as match, on libuv's pool; `within` and `out` must not be touched until it settles. */
  matchAsync(attrs: RequestAttributes, options?: TargetingMatchOptions): Promise<TargetingMatch>;
  /** Approximate bytes held by the index. */
  memoryBytes(): number;
}

interface TargetingNativeModule {
  TargetingIndex: { new (): TargetingIndex };
}

/** Targeting index: `new TargetingIndex()`, then `set(id, targeting)` per ad and `match(attrs)` per request. */
export const TargetingIndex = (addon as NativeModule & TargetingNativeModule).TargetingIndex;
