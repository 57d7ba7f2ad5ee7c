/**
 * Generated benchmark data: a seeded Gaussian mixture, cached as `.fvecs` so repeat runs skip
 * generation. Generated data is not real data; every figure computed on it must say so.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { readFvecs, writeFvecs } from './fvecs';

/** Seeded pseudo-random source: `next()` is uniform in [0, 1), `gaussian()` is standard normal. */
export class SeededRandom {
  private a: number;
  private b: number;
  private c: number;
  private d: number;
  private spare = 0;
  private hasSpare = false;

  /** Same seed (any integer; only the low 32 bits count) and stream, same sequence. */
  constructor(seed: number, stream = 0) {
    let s = (seed ^ Math.imul(stream + 1, 0x9e3779b9)) >>> 0;
    const splitmix = (): number => {
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.a = splitmix();
    this.b = splitmix();
    this.c = splitmix();
    this.d = splitmix();
    for (let i = 0; i < 12; i++) this.nextUint32();
  }

  /** Next 32-bit unsigned integer (sfc32). */
  nextUint32(): number {
    const t = (((this.a + this.b) >>> 0) + this.d) >>> 0;
    this.d = (this.d + 1) >>> 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) >>> 0;
    this.c = ((this.c << 21) | (this.c >>> 11)) >>> 0;
    this.c = (this.c + t) >>> 0;
    return t;
  }

  /** Uniform in [0, 1) with 32 bits of resolution. */
  next(): number {
    return this.nextUint32() / 4294967296;
  }

  /** Uniform integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** Standard normal draw (Box-Muller, both values of a pair used). */
  gaussian(): number {
    if (this.hasSpare) {
      this.hasSpare = false;
      return this.spare;
    }
    let u = 0;
    while (u === 0) u = this.next();
    const v = this.next();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    this.hasSpare = true;
    return r * Math.cos(2 * Math.PI * v);
  }
}

/** Shape of a generated Gaussian-mixture dataset. */
export interface MixtureSpec {
  /** Base vectors. */
  n: number;
  /** Query vectors, drawn from the same mixture (not copies of base rows). */
  queries: number;
  dim: number;
  /** Mixture components, picked uniformly per vector. */
  clusters: number;
  seed: number;
}

/** A generated dataset: `base` is `n * dim` floats, `query` is `queries * dim`, row-major. */
export interface MixtureData {
  spec: MixtureSpec;
  base: Float32Array;
  query: Float32Array;
}

/** Bumped whenever the generator's output changes, so stale cache files are not reused. */
export const MIXTURE_VERSION = 1;

/**
 * Smallest and largest per-cluster standard deviation (log-uniform), relative to the N(0, 1)
 * centers. Chosen so that clusters overlap enough for HNSW (M=16, efConstruction=200) on 100k
 * x 128 to need ef between 16 and 256 to reach recall@10 = 0.95, as on SIFT; tighter clusters
 * make every ef look perfect.
 */
export const CLUSTER_SPREAD: readonly [number, number] = [0.6, 1.2];

function checkSpec(spec: MixtureSpec): void {
  for (const key of ['n', 'queries', 'dim', 'clusters'] as const) {
    if (!Number.isInteger(spec[key]) || spec[key] <= 0) {
      throw new Error(`mixture ${key} must be a positive integer, got ${spec[key]}`);
    }
  }
  if (!Number.isInteger(spec.seed)) throw new Error(`mixture seed must be an integer, got ${spec.seed}`);
}

/**
 * Generates the mixture: cluster centers ~ N(0, I), each cluster with its own isotropic spread
 * (log-uniform in {@link CLUSTER_SPREAD}); a vector is its cluster's center plus spread * N(0, I).
 * Centers, base and queries use separate streams of the seed, so the queries do not depend on `n`.
 */
export function generateMixture(spec: MixtureSpec): MixtureData {
  checkSpec(spec);
  const { n, queries, dim, clusters, seed } = spec;
  const model = new SeededRandom(seed, 0);
  const centers = new Float32Array(clusters * dim);
  for (let i = 0; i < centers.length; i++) centers[i] = model.gaussian();
  const spread = new Float64Array(clusters);
  const [lo, hi] = CLUSTER_SPREAD;
  for (let c = 0; c < clusters; c++) spread[c] = lo * Math.pow(hi / lo, model.next());

  const draw = (rows: number, stream: number): Float32Array => {
    const rng = new SeededRandom(seed, stream);
    const out = new Float32Array(rows * dim);
    for (let r = 0; r < rows; r++) {
      const c = rng.int(clusters);
      const s = spread[c];
      const cBase = c * dim;
      const oBase = r * dim;
      for (let j = 0; j < dim; j++) out[oBase + j] = centers[cBase + j] + s * rng.gaussian();
    }
    return out;
  };
  return { spec: { ...spec }, base: draw(n, 1), query: draw(queries, 2) };
}

/** Cache file paths of a spec under `cacheDir` (base and query `.fvecs`). */
export function mixtureCachePaths(spec: MixtureSpec, cacheDir: string): { base: string; query: string } {
  const stem = `gmm-v${MIXTURE_VERSION}-n${spec.n}-q${spec.queries}-d${spec.dim}-c${spec.clusters}-s${spec.seed}`;
  return { base: path.join(cacheDir, `${stem}.base.fvecs`), query: path.join(cacheDir, `${stem}.query.fvecs`) };
}

/** Reads the mixture from `cacheDir` when both files are there, else generates and writes them; `cached` says which. */
export function loadOrGenerateMixture(spec: MixtureSpec, cacheDir: string): MixtureData & { cached: boolean } {
  checkSpec(spec);
  const files = mixtureCachePaths(spec, cacheDir);
  if (fs.existsSync(files.base) && fs.existsSync(files.query)) {
    const base = readFvecs(files.base);
    const query = readFvecs(files.query);
    if (base.rows === spec.n && base.dim === spec.dim && query.rows === spec.queries && query.dim === spec.dim) {
      return { spec: { ...spec }, base: base.data, query: query.data, cached: true };
    }
  }
  const data = generateMixture(spec);
  fs.mkdirSync(cacheDir, { recursive: true });
  writeFvecs(files.base, data.base, spec.dim);
  writeFvecs(files.query, data.query, spec.dim);
  return { ...data, cached: false };
}
