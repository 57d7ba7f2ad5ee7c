/**
 * Shard snapshots in a NATS JetStream object store (CONTRACT section 6: "filled from the stream
 * or a snapshot"): a serving replica now and then uploads a consistent copy of its data
 * directory (the LMDB file, which holds the stream sequence number it reflects, and the ANN
 * index file); a new or empty replica downloads the newest one and then applies only the
 * stream's messages after it, instead of the shard's whole history.
 *
 * Objects, per shard (`<N>.<I>` as in the shard's subject): `<N>.<I>/ann.fidx`,
 * `<N>.<I>/catalog.mdb`, then `<N>.<I>/manifest` (JSON, written last). The manifest names the
 * stream (by name and creation time, so a snapshot of a deleted and recreated stream is never
 * restored) and the sequence number. A restore trusts the copy itself, not the manifest, for
 * what it holds: the stream sequence number is read from the restored store, and the ANN
 * file is checked against the store when the data directory is opened (caught up from its
 * change log, or rebuilt).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createHash } from 'node:crypto';
import type { JetStreamClient } from '@nats-io/jetstream';
import { Objm, StorageType, type ObjectInfo, type ObjectStore } from '@nats-io/obj';
import type { NatsConnection } from './replica';
import { ANN_FILE, CatalogStore, LMDB_FILE, writeDataMarker } from '../store/catalog-store';

export interface SnapshotManifest {
  v: 1;
  /** "I/N" */
  shard: string;
  stream: string;
  /** The stream's creation time (ISO), as JetStream reports it. */
  stream_created: string;
  /** The last stream sequence number the copy holds. */
  stream_seq: number;
  ads: number;
  dim: number | null;
  /** Bytes of the LMDB file and of the ANN file (0: none). */
  lmdb_bytes: number;
  ann_bytes: number;
  created_ms: number;
}

/** Checks a manifest read from the store; null when it is not one this build writes. */
export function parseManifest(bytes: Uint8Array): SnapshotManifest | null {
  let m: unknown;
  try {
    m = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch {
    return null;
  }
  const o = m as Record<string, unknown>;
  if (!o || typeof o !== 'object' || o.v !== 1) return null;
  const nat = (x: unknown) => typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
  if (typeof o.shard !== 'string' || typeof o.stream !== 'string' || typeof o.stream_created !== 'string') return null;
  if (!nat(o.stream_seq) || !nat(o.ads) || !nat(o.lmdb_bytes) || !nat(o.ann_bytes) || !nat(o.created_ms)) return null;
  if (o.dim !== null && !nat(o.dim)) return null;
  return o as unknown as SnapshotManifest;
}

/** Opens (creating when missing) the snapshot bucket: file storage, `replicas` copies. */
export async function openSnapshotStore(nc: NatsConnection, bucket: string, replicas: number): Promise<ObjectStore> {
  return new Objm(nc).create(bucket, { storage: StorageType.File, replicas });
}

/** One shard's snapshots in the bucket. */
export class ShardSnapshots {
  constructor(
    private readonly os: ObjectStore,
    /** `<N>.<I>` */
    private readonly key: string,
    /**
     * Reads an object's bytes as the file takes them: readChunks over JetStream. (The object
     * store's own reader buffers a whole object in memory when the disk is slower than NATS.)
     */
    private readonly read: (info: ObjectInfo) => AsyncIterable<Uint8Array>,
  ) {}

  private name(file: string): string {
    return `${this.key}/${file}`;
  }

  /** The newest snapshot's manifest, or null when there is none (or it is unreadable). */
  async manifest(): Promise<SnapshotManifest | null> {
    const b = await this.os.getBlob(this.name('manifest'));
    return b ? parseManifest(b) : null;
  }

  /**
   * Uploads a consistent copy of `store`'s directory. The ANN file is copied before the LMDB
   * file, so the index never reflects more than the store (a restore catches it up).
   * `work` is an empty scratch directory on the same volume (removed by the caller).
   */
  async take(store: CatalogStore, work: string, shard: string, stream: { name: string; created: string }): Promise<SnapshotManifest> {
    fs.mkdirSync(work, { recursive: true });
    const annSrc = path.join(store.dir, ANN_FILE);
    let annBytes = 0;
    try {
      fs.copyFileSync(annSrc, path.join(work, ANN_FILE));
      annBytes = fs.statSync(path.join(work, ANN_FILE)).size;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    await store.backup(path.join(work, LMDB_FILE));
    writeDataMarker(work);
    const copy = CatalogStore.open(work);
    let manifest: SnapshotManifest;
    try {
      manifest = {
        v: 1,
        shard,
        stream: stream.name,
        stream_created: stream.created,
        stream_seq: copy.streamSeq,
        ads: copy.count,
        dim: copy.dim,
        lmdb_bytes: fs.statSync(path.join(work, LMDB_FILE)).size,
        ann_bytes: annBytes,
        created_ms: Date.now(),
      };
    } finally {
      await copy.close();
    }
    if (annBytes > 0) await this.putFile(ANN_FILE, path.join(work, ANN_FILE));
    else await this.os.delete(this.name(ANN_FILE)).catch(() => undefined);
    await this.putFile(LMDB_FILE, path.join(work, LMDB_FILE));
    await this.os.putBlob({ name: this.name('manifest') }, Buffer.from(JSON.stringify(manifest)));
    return manifest;
  }

  private async putFile(file: string, from: string): Promise<void> {
    const rs = Readable.toWeb(fs.createReadStream(from, { highWaterMark: 1 << 20 })) as unknown as ReadableStream<Uint8Array>;
    await this.os.put({ name: this.name(file) }, rs, { timeout: 30_000 });
  }

  /**
   * Fills the empty directory `dir` from the newest snapshot of a stream of this name and
   * creation time. Returns its manifest, or null when there is no usable snapshot (none, another
   * stream's, or one whose files are gone); on an error the directory is left empty again.
   */
  async restore(dir: string, stream: { name: string; created: string }): Promise<SnapshotManifest | null> {
    const m = await this.manifest();
    if (!m || m.stream !== stream.name || m.stream_created !== stream.created) return null;
    fs.mkdirSync(dir, { recursive: true });
    try {
      if (!(await this.getFile(LMDB_FILE, path.join(dir, LMDB_FILE)))) {
        clearDir(dir);
        return null;
      }
      if (m.ann_bytes > 0) await this.getFile(ANN_FILE, path.join(dir, ANN_FILE));
      // The marker last: until it is there, the directory is not a data directory.
      writeDataMarker(dir);
      return m;
    } catch (err) {
      clearDir(dir);
      throw err;
    }
  }

  private async getFile(file: string, to: string): Promise<boolean> {
    const info = await this.os.info(this.name(file));
    if (!info || info.deleted) return false;
    const tmp = `${to}.part`;
    try {
      await pipeline(Readable.from(this.read(info)), fs.createWriteStream(tmp));
    } catch (err) {
      fs.rmSync(tmp, { force: true });
      throw err;
    }
    fs.renameSync(tmp, to);
    return true;
  }
}

/**
 * An object's chunks, read with an ordered pull consumer on the object store's stream: at most
 * 32 chunks (4 MiB at the default 128 KiB) are fetched ahead of the reader, so a slow disk
 * holds back NATS instead of filling memory. The SHA-256 digest is checked at the end.
 */
export async function* readChunks(js: JetStreamClient, info: ObjectInfo, stallMs = 30_000): AsyncGenerator<Uint8Array> {
  const want = parseDigest(info.digest);
  if (!want) throw new Error(`${info.name}: unknown digest ${info.digest}`);
  if (info.size === 0) return;
  const consumer = await js.consumers.get(`OBJ_${info.bucket}`, { filter_subjects: `$O.${info.bucket}.C.${info.nuid}` });
  const messages = await consumer.consume({ max_messages: 32 });
  const sha = createHash('sha256');
  let bytes = 0;
  // Chunks purged under the reader (a newer snapshot replaced this one) never come: give up.
  let last = Date.now();
  const watchdog = setInterval(() => {
    if (Date.now() - last > stallMs) messages.stop();
  }, Math.min(1000, stallMs));
  try {
    for await (const m of messages) {
      last = Date.now();
      sha.update(m.data);
      bytes += m.data.length;
      if (m.data.length > 0) yield m.data;
      if (m.info.pending === 0) break;
    }
  } finally {
    clearInterval(watchdog);
    messages.stop();
  }
  if (bytes !== info.size) throw new Error(`${info.name}: read ${bytes} of ${info.size} bytes (the object changed or NATS went away while it was read)`);
  if (!sha.digest().equals(want)) throw new Error(`${info.name}: the object is corrupt (its SHA-256 digest does not match)`);
}

/** "SHA-256=<base64url>" -> the 32 digest bytes, or null. */
export function parseDigest(digest: string): Buffer | null {
  const m = /^SHA-256=([A-Za-z0-9_=+/-]+)$/.exec(digest);
  if (!m) return null;
  const b = Buffer.from(m[1].replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, ''), 'base64url');
  return b.length === 32 ? b : null;
}

function clearDir(dir: string): void {
  for (const f of fs.readdirSync(dir)) fs.rmSync(path.join(dir, f), { recursive: true, force: true });
}
