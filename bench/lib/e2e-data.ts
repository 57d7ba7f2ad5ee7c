/**
 * Data of bench:e2e: the generated catalog's data directory (JSON Lines written as a stream, then
 * `funnel ingest`, cached under bench/.cache and reused), and the pool of pre-serialized Retrieve
 * requests (generated attributes plus the embedding of a generated ad with noise).
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { once } from 'node:events';
import { generateCatalog, generateRequests, Rng, type CatalogOptions } from '../../src/catalog/generate';
import { encodeRetrieveRequest } from '../../src/grpc/codec';

/** Bumped whenever what gets cached changes, so stale cache directories are not reused. */
export const E2E_DATA_VERSION = 1;

/** Name of the cached data directory of a generated catalog (under bench/.cache). */
export function e2eCacheName(ads: number, dim: number, seed: number, shape: CatalogShape = 'mixture'): string {
  return `e2e-${ads}-d${dim}-s${seed}${shape === 'mixture' ? '' : `-${shape}`}${E2E_DATA_VERSION > 1 ? `-v${E2E_DATA_VERSION}` : ''}`;
}

/** The generator's catalog shapes. */
export type CatalogShape = NonNullable<CatalogOptions['shape']>;

/** Bytes gathered before one write to the catalog file. */
const WRITE_CHUNK = 1 << 20;

/**
 * Writes `count` generated rows as JSON Lines to `file`, streaming (a million rows never sit in
 * memory); `progress(rows)` is called every 100,000 rows.
 */
export async function writeCatalogJsonl(
  file: string,
  spec: { count: number; dim: number; seed: number; now: Date; shape?: CatalogShape },
  progress: (rows: number) => void = () => {},
): Promise<void> {
  const out = fs.createWriteStream(file, { highWaterMark: 4 * WRITE_CHUNK });
  const failed = new Promise<never>((_, reject) => out.once('error', reject));
  failed.catch(() => {});
  let chunk: string[] = [];
  let chunkBytes = 0;
  let rows = 0;
  const flush = async (): Promise<void> => {
    if (chunk.length === 0) return;
    const ok = out.write(chunk.join(''));
    chunk = [];
    chunkBytes = 0;
    if (!ok) await Promise.race([once(out, 'drain'), failed]);
  };
  for (const row of generateCatalog({ count: spec.count, dim: spec.dim, seed: spec.seed, now: spec.now, shape: spec.shape })) {
    const line = JSON.stringify(row) + '\n';
    chunk.push(line);
    chunkBytes += line.length;
    if (chunkBytes >= WRITE_CHUNK) await flush();
    if (++rows % 100_000 === 0) progress(rows);
  }
  await flush();
  out.end();
  await Promise.race([once(out, 'close'), failed]);
}

/** Runs `node mainJs ingest --catalog F --data D`, its output going to our stderr; rejects on a non-zero exit; `abort` kills it. */
export async function runIngest(mainJs: string, catalog: string, dataDir: string, abort?: AbortSignal): Promise<void> {
  const child = spawn(process.execPath, [mainJs, 'ingest', '--catalog', catalog, '--data', dataDir], {
    stdio: ['ignore', 2, 'inherit'],
    signal: abort,
    killSignal: 'SIGKILL',
  });
  const [code, signal] = (await Promise.race([once(child, 'exit'), once(child, 'error').then(([e]) => Promise.reject(e))])) as [
    number | null,
    NodeJS.Signals | null,
  ];
  if (code !== 0) throw new Error(`funnel ingest ${catalog} failed (${signal ?? `exit code ${code}`})`);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Removes scratch directories (`<name>.tmp-<pid>`) left in `cacheDir` by builds whose process is gone. */
export function removeStaleScratch(cacheDir: string, log: (message: string) => void): void {
  if (!fs.existsSync(cacheDir)) return;
  for (const entry of fs.readdirSync(cacheDir)) {
    const m = /^e2e-.*\.tmp-(\d+)$/.exec(entry);
    if (m && !alive(Number(m[1]))) {
      log(`removing ${entry}, left by an interrupted build`);
      fs.rmSync(path.join(cacheDir, entry), { recursive: true, force: true });
    }
  }
}

/**
 * The cached data directory of a generated catalog, built first when absent: the rows go to a
 * JSONL file in a scratch directory, are ingested there, and the result is renamed into place only
 * once ingest succeeded (an interrupted build is never reused); the JSONL is then deleted.
 * `signal` kills a running ingest.
 */
export async function ensureGeneratedDataDir(
  mainJs: string,
  cacheDir: string,
  spec: { ads: number; dim: number; seed: number; shape?: CatalogShape },
  log: (message: string) => void,
  signal?: AbortSignal,
): Promise<{ dir: string; built: boolean }> {
  const dir = path.join(cacheDir, e2eCacheName(spec.ads, spec.dim, spec.seed, spec.shape));
  if (fs.existsSync(dir)) return { dir, built: false };
  fs.mkdirSync(cacheDir, { recursive: true });
  removeStaleScratch(cacheDir, log);
  const scratch = `${dir}.tmp-${process.pid}`;
  fs.rmSync(scratch, { recursive: true, force: true });
  fs.mkdirSync(scratch);
  try {
    const catalog = path.join(scratch, 'catalog.jsonl');
    const data = path.join(scratch, 'data');
    log(`generating ${spec.ads} ads x ${spec.dim}-d (seed ${spec.seed}, ${spec.shape ?? 'mixture'}) into ${catalog}`);
    // Flight windows are placed around now, so that the usual share of ads is in flight today.
    await writeCatalogJsonl(catalog, { count: spec.ads, dim: spec.dim, seed: spec.seed, now: new Date(), shape: spec.shape }, (rows) =>
      log(`  ${rows.toLocaleString('en-US')} rows written`),
    );
    log(`catalog file: ${(fs.statSync(catalog).size / 2 ** 20).toFixed(0)} MiB; funnel ingest into ${data}`);
    await runIngest(mainJs, catalog, data, signal);
    fs.renameSync(data, dir);
  } finally {
    fs.rmSync(scratch, { recursive: true, force: true });
  }
  return { dir, built: true };
}

/** Options of {@link buildRequestPool}. */
export interface RequestPoolSpec {
  /** Requests in the pool. */
  size: number;
  dim: number;
  /** Catalog seed: embeddings come from this catalog's rows, attributes from generateRequests(size, seed + 1). */
  seed: number;
  /** Rows of the catalog the embeddings may be drawn from (the first ones; at most the catalog's size). */
  sourceRows: number;
  numResults: number;
}

/** Standard deviation of the noise added to an ad's embedding (the generator's spread around a cluster centre). */
const EMBEDDING_NOISE = 0.35;

/**
 * `size` serialized RetrieveRequests: request i carries generated attributes i, the embedding of a
 * random one of the first `sourceRows` generated ads plus Gaussian noise, and `numResults`.
 */
export function buildRequestPool(spec: RequestPoolSpec): Buffer[] {
  const rng = new Rng(spec.seed + 1, 0xe2e);
  const sourceRows = Math.max(1, spec.sourceRows);
  const picks = Array.from({ length: spec.size }, () => rng.int(sourceRows));
  const wanted = new Map<number, number[]>();
  picks.forEach((row) => wanted.set(row, []));
  const last = Math.max(...picks);
  let row = 0;
  for (const ad of generateCatalog({ count: last + 1, dim: spec.dim, seed: spec.seed })) {
    if (wanted.has(row)) wanted.set(row, ad.embedding);
    row++;
  }
  const attributes = generateRequests(spec.size, spec.seed + 1);
  return picks.map((pick, i) => {
    const base = wanted.get(pick) as number[];
    const embedding = new Float32Array(spec.dim);
    for (let j = 0; j < spec.dim; j++) embedding[j] = base[j] + EMBEDDING_NOISE * rng.normal();
    const attrs: Record<string, { values: string[] }> = {};
    for (const [name, values] of Object.entries(attributes[i])) attrs[name] = { values: [...(values ?? [])] };
    return encodeRetrieveRequest({
      request_id: `e2e-${i}`,
      user_id: `user-${i % 100_000}`,
      attributes: attrs,
      user_embedding: embedding,
      num_results: spec.numResults,
    });
  });
}
