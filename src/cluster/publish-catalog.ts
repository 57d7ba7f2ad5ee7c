/**
 * `funnel ingest --catalog FILE --nats URL --shards N` (CONTRACT section 6): validates the
 * whole file first (the same checks, errors and exit codes as an ingest into a directory), and
 * only then publishes it, each shard's rows to its subject, as one staged ingest per shard:
 *
 *   ingest_begin, ingest_chunk x K, ingest_commit
 *
 * A replica stages the chunks invisibly and applies them all in the one transaction of the
 * commit, so no replica ever serves part of a file; a publisher that dies half-way leaves a
 * staging area the next ingest_begin discards. Chunks are about 256 KiB; every message carries
 * a NATS message id derived from the ingest id, so a retried publish is stored once.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import type { ClusterConfig } from '../config/schema';
import { IngestError, scanCatalog } from '../store/ingest';
import type { AnnSettings } from '../store/catalog-store';
import { encodeChunk, encodeMessage, rowToWire } from './messages';
import { connectStream } from './replica';
import { shardOf, shardSubject } from './shard';

/** Encoded bytes per chunk message (well under NATS's default 1 MiB payload limit). */
const CHUNK_BYTES = 256 * 1024;
/** Publishes awaiting their acknowledgement at once. */
const WINDOW = 64;

export interface PublishCatalogOptions {
  nats: string;
  shards: number;
  cluster: ClusterConfig;
  replace?: boolean;
  ann?: Partial<AnnSettings>;
  log: Logger;
  progress?: {
    read?(bytes: number, totalBytes: number, rows: number): void;
    publish?(rows: number, totalRows: number): void;
  };
}

export interface PublishCatalogResult {
  ingest: string;
  rows: number;
  perShard: number[];
  messages: number;
  bytes: number;
  /** Stream sequence number of the last commit: a `min_seq` that sees the whole file. */
  lastSeq: number;
  seconds: { validate: number; publish: number; total: number };
}

/** Validates `file` in full, then publishes it to the stream. Throws IngestError (nothing published) on bad rows. */
export async function publishCatalog(file: string, options: PublishCatalogOptions): Promise<PublishCatalogResult> {
  const t0 = Date.now();
  // Pass 1: validate everything (as an ingest does); nothing is published unless every row is good.
  const perShard = new Array<number>(options.shards).fill(0);
  const { rows } = await scanCatalog(file, {
    onRow: (row) => {
      perShard[shardOf(row.ad_id, options.shards)]++;
    },
    progress: (bytes, total, n) => options.progress?.read?.(bytes, total, n),
  });
  const validated = Date.now();

  // Pass 2: publish, shard by shard subject, in file order.
  const { nc, js } = await connectStream(options.nats, options.cluster, 'funnel-ingest', options.log);
  const ingest = randomUUID();
  let messages = 0;
  let bytes = 0;
  let lastSeq = 0;
  let published = 0;
  const inflight = new Set<Promise<void>>();
  const subjects = Array.from({ length: options.shards }, (_, index) => shardSubject(options.cluster.subject_prefix, { index, count: options.shards }));
  const send = async (shard: number, id: string, data: Uint8Array) => {
    const p = js.publish(subjects[shard], data, { msgID: `${ingest}-${shard}-${id}`, timeout: Math.max(options.cluster.publish_timeout_ms, 30_000) }).then((ack) => {
      if (ack.seq > lastSeq) lastSeq = ack.seq;
    });
    messages++;
    bytes += data.length;
    const tracked = p.finally(() => inflight.delete(tracked));
    inflight.add(tracked);
    if (inflight.size >= WINDOW) await Promise.race(inflight);
  };
  try {
    for (let s = 0; s < options.shards; s++) {
      await send(s, 'begin', encodeMessage({ kind: 'ingest_begin', ingest, rows: perShard[s], replace: options.replace ?? false, ...(options.ann && Object.keys(options.ann).length > 0 && { ann: options.ann }) }));
    }
    const pending: { rows: string[]; bytes: number }[] = Array.from({ length: options.shards }, () => ({ rows: [], bytes: 0 }));
    const chunks = new Array<number>(options.shards).fill(0);
    const flush = async (s: number) => {
      const p = pending[s];
      if (p.rows.length === 0) return;
      const data = encodeChunk(ingest, chunks[s], p.rows);
      await send(s, `chunk-${chunks[s]}`, data);
      chunks[s]++;
      published += p.rows.length;
      options.progress?.publish?.(published, rows);
      pending[s] = { rows: [], bytes: 0 };
    };
    try {
      await scanCatalog(file, {
        onRow: (row) => {
          const s = shardOf(row.ad_id, options.shards);
          const p = pending[s];
          const wire = JSON.stringify(rowToWire(row));
          p.rows.push(wire);
          p.bytes += wire.length + 1;
          if (p.bytes >= CHUNK_BYTES) return flush(s);
        },
      });
    } catch (err) {
      if (!(err instanceof IngestError)) throw err;
      throw new Error(`${file} changed while it was published: a row that validated no longer does; the replicas discard the unfinished ingest at the next one`);
    }
    for (let s = 0; s < options.shards; s++) await flush(s);
    // Every chunk must be in the stream before any commit: a commit's replica applies all or nothing.
    await Promise.all(inflight);
    for (let s = 0; s < options.shards; s++) {
      await send(s, 'commit', encodeMessage({ kind: 'ingest_commit', ingest, chunks: chunks[s], rows: perShard[s] }));
    }
    await Promise.all(inflight);
  } finally {
    await nc.drain().catch(() => undefined);
  }
  const done = Date.now();
  return {
    ingest,
    rows,
    perShard,
    messages,
    bytes,
    lastSeq,
    seconds: { validate: (validated - t0) / 1000, publish: (done - validated) / 1000, total: (done - t0) / 1000 },
  };
}
