/**
 * Keeps the ANN index file of a data directory in step with its LMDB store: the file is tagged
 * with the change sequence number it reflects; opening catches up from the store's change log,
 * or rebuilds from the stored embeddings when the log no longer covers the gap, the file is
 * missing or damaged, or its settings differ from the store's.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { HnswIndex, type HnswIndex as Hnsw } from '../native/index';
import { ANN_FILE, type CatalogStore } from './catalog-store';

/** Progress callback: `done` of `total` vectors indexed in the current phase. */
export type AnnProgress = (phase: 'rebuild' | 'catch-up', done: number, total: number) => void;

/** How the index was brought up to date. */
export interface AnnSyncResult {
  index: Hnsw;
  /** `loaded`: the file was current; `caught-up`: log replayed; `rebuilt`: built from embeddings. */
  how: 'loaded' | 'caught-up' | 'rebuilt';
  /** Why a rebuild happened, when it did. */
  reason?: string;
  /** Changes applied (catch-up) or vectors indexed (rebuild). */
  applied: number;
  seconds: number;
  /** The store's sequence number the index reflects (writes after it are not in it). */
  seq: number;
}

const CHUNK = 50_000;

/** Path of the ANN index file of a store. */
export function annPath(store: CatalogStore): string {
  return path.join(store.dir, ANN_FILE);
}

async function rebuild(store: CatalogStore, threads: number, progress?: AnnProgress): Promise<Hnsw> {
  const dim = store.dim ?? 1;
  const { metric, M, efConstruction } = store.ann;
  const index = new HnswIndex({ dim, metric, M, efConstruction, capacity: Math.max(1024, store.idLimit) });
  const total = store.count;
  let done = 0;
  const ids = new Uint32Array(CHUNK);
  const vectors = new Float32Array(CHUNK * dim);
  let n = 0;
  const flush = async () => {
    if (n === 0) return;
    await index.addBatchAsync(ids.subarray(0, n), vectors.subarray(0, n * dim), threads);
    done += n;
    progress?.('rebuild', done, total);
    n = 0; // the worker is done with the buffers once it resolves: refill them

  };
  for (const { id, vector } of store.embeddings()) {
    ids[n] = id;
    vectors.set(vector, n * dim);
    n++;
    if (n === CHUNK) await flush();
  }
  await flush();
  return index;
}

async function catchUp(store: CatalogStore, index: Hnsw, fromSeq: number, progress?: AnnProgress): Promise<number | null> {
  const changes = store.changesSince(fromSeq);
  if (changes === null) return null;
  // Last change per id wins; upserts are applied in batches off the event loop.
  const last = new Map<number, 'upsert' | 'remove'>();
  for (const c of changes) last.set(c.id, c.op);
  const upserts: number[] = [];
  for (const [id, op] of last) {
    if (op === 'remove') {
      if (index.has(id)) index.remove(id);
    } else {
      upserts.push(id);
    }
  }
  const dim = index.dim;
  for (let i = 0; i < upserts.length; i += CHUNK) {
    const part = upserts.slice(i, i + CHUNK);
    const ids = new Uint32Array(part.length);
    const vectors = new Float32Array(part.length * dim);
    let n = 0;
    for (const id of part) {
      const v = store.getEmbedding(id);
      if (!v) continue; // removed again later in the same log: nothing to index
      ids[n] = id;
      vectors.set(v, n * dim);
      n++;
    }
    if (n > 0) await index.addBatchAsync(ids.subarray(0, n), vectors.subarray(0, n * dim), 1);
    progress?.('catch-up', Math.min(i + CHUNK, upserts.length), upserts.length);
  }
  return last.size;
}

/**
 * Loads the data directory's ANN index and brings it up to the store's sequence number.
 * With `save`, a changed index is written back (tagged with the sequence number) and the log
 * up to it pruned. `threads` builds in parallel when rebuilding (default: all cores).
 */
export async function syncAnnIndex(
  store: CatalogStore,
  options: { save?: boolean; threads?: number; mmap?: boolean; progress?: AnnProgress } = {},
): Promise<AnnSyncResult> {
  const started = process.hrtime.bigint();
  const seconds = () => Number(process.hrtime.bigint() - started) / 1e9;
  const file = annPath(store);
  const seq = store.seq;
  const threads = options.threads ?? Math.max(1, os.availableParallelism());
  let index: Hnsw | undefined;
  let reason: string | undefined;
  if (!fs.existsSync(file)) {
    reason = 'no index file';
  } else {
    try {
      index = HnswIndex.load(file, { mmap: options.mmap ?? false });
    } catch (err) {
      reason = `index file unusable (${(err as Error).message})`;
    }
    const want = store.ann;
    if (index && (index.dim !== store.dim || index.metric !== want.metric || index.M !== want.M)) {
      reason = 'index settings differ from the store';
      index = undefined;
    } else if (index && index.tag > seq) {
      reason = `index file is ahead of the store (tag ${index.tag} > seq ${seq})`;
      index = undefined;
    }
  }
  let how: AnnSyncResult['how'] = 'loaded';
  let applied = 0;
  if (index && index.tag < seq && !options.save && store.changesSince(index.tag) === null && fs.existsSync(file)) {
    // Another process (the checkpointing worker) may have saved a newer file and pruned the log
    // since this one was opened: the newer file is worth more than a rebuild.
    try {
      const again = HnswIndex.load(file, { mmap: options.mmap ?? false });
      if (again.tag <= seq && again.tag > index.tag && again.dim === index.dim && again.metric === index.metric && again.M === index.M) index = again;
    } catch {
      /* keep the first one: the log check below decides */
    }
  }
  if (index && index.tag < seq) {
    const n = await catchUp(store, index, index.tag, options.progress);
    if (n === null) {
      reason = `change log does not reach back to the index's sequence ${index.tag}`;
      index = undefined;
    } else {
      how = 'caught-up';
      applied = n;
    }
  }
  if (!index) {
    index = await rebuild(store, threads, options.progress);
    how = 'rebuilt';
    applied = index.size;
  }
  if (options.save && how !== 'loaded') {
    index.save(file, { tag: seq });
    await store.pruneLog(seq);
  }
  return { index, how, reason, applied, seconds: seconds(), seq };
}
