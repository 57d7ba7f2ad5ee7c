/**
 * `funnel ingest`: streams a catalog JSONL file into a data directory, atomically.
 *
 * One pass reads the file line by line (never whole), validates every row and stages the
 * valid ones in LMDB's staging area, invisible to readers. If any row was bad, the staging
 * area is emptied and nothing is applied; otherwise one transaction moves every staged row
 * into the catalog (upsert by ad_id; with `replace`, ads absent from the file are deleted).
 * The ANN index is then brought up to date and saved, tagged with the new sequence number.
 */
import * as fs from 'node:fs';
import * as readline from 'node:readline';
import { syncAnnIndex, type AnnSyncResult } from './ann-sync';
import { parseCatalogLine, type CatalogRow, type RowIssue } from './catalog-schema';
import { CatalogStore, type AnnSettings, type WriteResult } from './catalog-store';

/** Most bad rows reported (the contract's "up to the first 100"). */
export const MAX_REPORTED_ERRORS = 100;

/** A bad row: its 1-based line number and the issues found. */
export interface RowError extends RowIssue {
  line: number;
}

/** The file had bad rows; nothing was applied. `total` counts all bad rows, `errors` the first 100. */
export class IngestError extends Error {
  readonly code = 'ERR_BAD_CATALOG';
  constructor(
    readonly errors: RowError[],
    readonly total: number,
    readonly file: string,
  ) {
    super(`${file}: ${total} bad row${total === 1 ? '' : 's'}; nothing was applied`);
  }
}

/** Progress events for the command line. */
export interface IngestProgress {
  /** Reading: bytes consumed of the file's size, rows seen. */
  read?(bytes: number, totalBytes: number, rows: number): void;
  /** Applying / indexing. */
  phase?(name: 'commit' | 'index', done: number, total: number): void;
}

/** What an ingest did. */
export interface IngestResult {
  rows: number;
  write: WriteResult;
  ann: Omit<AnnSyncResult, 'index'> & { size: number; bytes: number };
  seconds: { read: number; commit: number; index: number; total: number };
}

/** Options of {@link ingestCatalog}. */
export interface IngestOptions {
  replace?: boolean;
  /** ANN settings used when the directory is new or replaced. */
  ann?: Partial<AnnSettings>;
  /** Threads for the ANN build (default: all cores). */
  threads?: number;
  progress?: IngestProgress;
}

const STAGE_BATCH = 2000;

/** Options of {@link scanCatalog}. */
export interface ScanOptions {
  /** The catalog's embedding dimension, when known (else the first good row sets it). */
  dim?: number;
  /** Each good row with its 1-based line number, in file order, until the first bad row; a promise returned is awaited. */
  onRow?(row: CatalogRow, line: number): void | Promise<unknown>;
  /** Bytes read of the file's size and rows seen, every 1,024 rows and at the end. */
  progress?(bytes: number, totalBytes: number, rows: number): void;
}

/**
 * Reads a catalog file line by line (never whole) and validates every row as an ingest does:
 * the row schema, the dimension, duplicate ad_ids. Good rows go to `onRow` until a bad one is
 * seen (nothing will be applied then, but validation goes on to report every bad row). Resolves
 * to the rows read; throws IngestError (the first 100 bad rows, and their count) if any was bad.
 */
export async function scanCatalog(file: string, options: ScanOptions = {}): Promise<{ rows: number }> {
  const size = catalogSize(file);
  let dim = options.dim;
  const seen = new Set<string>();
  const errors: RowError[] = [];
  let bad = 0;
  let rows = 0;
  let lineNo = 0;
  let bytes = 0;
  const input = fs.createReadStream(file, { encoding: 'utf8', highWaterMark: 1 << 20 });
  const lines = readline.createInterface({ input, crlfDelay: Infinity });
  const report = (line: number, issues: RowIssue[]) => {
    bad++;
    for (const i of issues) if (errors.length < MAX_REPORTED_ERRORS) errors.push({ line, ...i });
  };
  for await (const line of lines) {
    lineNo++;
    bytes += Buffer.byteLength(line, 'utf8') + 1;
    if (line.trim() === '') continue;
    rows++;
    const parsed = parseCatalogLine(line, dim);
    if ('issues' in parsed) {
      report(lineNo, parsed.issues);
    } else if (seen.has(parsed.row.ad_id)) {
      report(lineNo, [{ field: 'ad_id', reason: `duplicate ad_id ${parsed.row.ad_id} (already on an earlier line)` }]);
    } else {
      seen.add(parsed.row.ad_id);
      dim ??= parsed.row.embedding.length;
      if (bad === 0 && options.onRow) {
        const p = options.onRow(parsed.row, lineNo);
        if (p) await p;
      }
    }
    if ((rows & 1023) === 0) options.progress?.(bytes, size, rows);
  }
  options.progress?.(size, size, rows);
  if (bad > 0) throw new IngestError(errors, bad, file);
  return { rows };
}

/** The catalog file's size in bytes; throws an Error naming the file when it cannot be read. */
function catalogSize(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch (err) {
    throw new Error(`cannot read catalog ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/** Ingests `file` into the data directory `dir` (created if missing). Throws IngestError on bad rows. */
export async function ingestCatalog(file: string, dir: string, options: IngestOptions = {}): Promise<IngestResult> {
  const t0 = process.hrtime.bigint();
  const since = (t: bigint) => Number(process.hrtime.bigint() - t) / 1e9;
  // Checked before the directory is created.
  catalogSize(file);
  const store = CatalogStore.open(dir, { create: true });
  try {
    await store.clearStaging();
    let pending: Promise<boolean>[] = [];
    let rows: number;
    try {
      ({ rows } = await scanCatalog(file, {
        dim: options.replace ? undefined : (store.dim ?? undefined),
        onRow: (row, line) => {
          pending.push(store.stage(line, row));
          if (pending.length < STAGE_BATCH) return;
          const batch = pending;
          pending = [];
          return Promise.all(batch);
        },
        progress: (bytes, total, rows) => options.progress?.read?.(bytes, total, rows),
      }));
    } catch (err) {
      await Promise.all(pending);
      if (err instanceof IngestError) await store.clearStaging();
      throw err;
    }
    await Promise.all(pending);
    const readSeconds = since(t0);

    const t1 = process.hrtime.bigint();
    options.progress?.phase?.('commit', 0, rows);
    const write = store.commitStaging({ replace: options.replace ?? false, ann: options.ann });
    await store.flushed();
    options.progress?.phase?.('commit', rows, rows);
    const commitSeconds = since(t1);

    const t2 = process.hrtime.bigint();
    const ann = await syncAnnIndex(store, {
      save: true,
      threads: options.threads,
      progress: (_phase, done, total) => options.progress?.phase?.('index', done, total),
    });
    const annInfo = { how: ann.how, reason: ann.reason, applied: ann.applied, seconds: ann.seconds, seq: ann.seq, size: ann.index.size, bytes: ann.index.memoryBytes() };
    return {
      rows,
      write,
      ann: annInfo,
      seconds: { read: readSeconds, commit: commitSeconds, index: since(t2), total: since(t0) },
    };
  } finally {
    await store.close();
  }
}
