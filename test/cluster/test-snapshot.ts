import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ObjectStore } from '@nats-io/obj';
import { ShardSnapshots, parseManifest } from '../../src/cluster/snapshot';
import { ANN_FILE, CatalogStore, LMDB_FILE, MARKER_FILE } from '../../src/store/catalog-store';
import { ingestCatalog } from '../../src/store/ingest';
import { row, tempDir, writeCatalog } from '../fixtures/catalog';

/** The part of a JetStream object store ShardSnapshots uses, in memory; `failGet` breaks one object's reads. */
class MemoryObjectStore {
  readonly objects = new Map<string, Uint8Array>();
  failGet: string | null = null;

  async getBlob(name: string): Promise<Uint8Array | null> {
    return this.objects.get(name) ?? null;
  }
  async putBlob(meta: { name: string }, data: Uint8Array | null): Promise<unknown> {
    this.objects.set(meta.name, new Uint8Array(data ?? []));
    return {};
  }
  async put(meta: { name: string }, rs: ReadableStream<Uint8Array>): Promise<unknown> {
    const parts: Uint8Array[] = [];
    for await (const c of rs) parts.push(c);
    this.objects.set(meta.name, new Uint8Array(Buffer.concat(parts)));
    return {};
  }
  async info(name: string): Promise<{ name: string; size: number; deleted: boolean } | null> {
    const b = this.objects.get(name);
    return b ? { name, size: b.length, deleted: false } : null;
  }
  /** The reader ShardSnapshots is given: an object's bytes in two chunks; a broken one stops after the first. */
  async *read(info: { name: string }): AsyncGenerator<Uint8Array> {
    const b = this.objects.get(info.name)!;
    yield b.subarray(0, Math.floor(b.length / 2));
    if (this.failGet === info.name) throw new Error('chunk missing');
    yield b.subarray(Math.floor(b.length / 2));
  }
  snapshots(key: string): ShardSnapshots {
    return new ShardSnapshots(this as unknown as ObjectStore, key, (info) => this.read(info));
  }
  async delete(name: string): Promise<unknown> {
    this.objects.delete(name);
    return {};
  }
}

const STREAM = { name: 'FUNNEL', created: '2026-11-29T10:00:00.000000000Z' };

describe('cluster/snapshot', () => {
  let dir: string;
  beforeEach(() => {
    dir = tempDir('snapshot');
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  /** A data directory of `n` ads whose store says it applied stream message `seq`. */
  async function dataDir(n: number, seq: number): Promise<string> {
    const data = path.join(dir, 'data');
    await ingestCatalog(writeCatalog(dir, 'c.jsonl', Array.from({ length: n }, (_, i) => row(i, 4))), data, { threads: 1 });
    const store = CatalogStore.open(data);
    await store.markStream(seq);
    await store.close();
    return data;
  }

  it('when a snapshot is taken and restored, then the new directory holds the same ads, embeddings and stream sequence number, and the ANN file', async () => {
    const data = await dataDir(50, 42);
    const os = new MemoryObjectStore();
    const snaps = os.snapshots('2.1');
    const src = CatalogStore.open(data);
    const m = await snaps.take(src, path.join(dir, 'work'), '1/2', STREAM);
    await src.close();
    assert.deepEqual([...os.objects.keys()].sort(), ['2.1/ann.fidx', '2.1/catalog.mdb', '2.1/manifest']);
    assert.equal(m.stream_seq, 42);
    assert.equal(m.ads, 50);
    assert.equal(m.dim, 4);
    assert.equal(m.shard, '1/2');
    assert.ok(m.ann_bytes > 0 && m.lmdb_bytes > 0);
    assert.deepEqual(await snaps.manifest(), m);

    const to = path.join(dir, 'restored');
    const got = await snaps.restore(to, STREAM);
    assert.deepEqual(got, m);
    assert.deepEqual(fs.readdirSync(to).sort(), [ANN_FILE, LMDB_FILE, MARKER_FILE].sort());
    const a = CatalogStore.open(data);
    const b = CatalogStore.open(to);
    try {
      assert.equal(b.streamSeq, 42);
      assert.equal(b.count, 50);
      for (let i = 0; i < 50; i++) {
        const ra = a.getAd(`ad-${i}`)!;
        const rb = b.getAd(`ad-${i}`)!;
        assert.deepEqual(rb, ra);
        assert.deepEqual(b.getEmbedding(rb.id), a.getEmbedding(ra.id));
      }
    } finally {
      await a.close();
      await b.close();
    }
    assert.deepEqual(fs.readFileSync(path.join(to, ANN_FILE)), fs.readFileSync(path.join(data, ANN_FILE)));
  });

  it('when the newest snapshot is of another stream (recreated) or there is none, then nothing is restored and the directory stays empty', async () => {
    const os = new MemoryObjectStore();
    const snaps = os.snapshots('1.0');
    const to = path.join(dir, 'restored');
    assert.equal(await snaps.restore(to, STREAM), null);
    const data = await dataDir(5, 7);
    const src = CatalogStore.open(data);
    await snaps.take(src, path.join(dir, 'work'), '0/1', STREAM);
    await src.close();
    assert.equal(await snaps.restore(to, { name: 'FUNNEL', created: '2026-11-30T00:00:00Z' }), null);
    assert.equal(await snaps.restore(to, { name: 'OTHER', created: STREAM.created }), null);
    assert.ok(!fs.existsSync(to) || fs.readdirSync(to).length === 0);
  });

  it('when a file cannot be read whole, then restore fails and leaves the directory empty (the caller fills it from the stream)', async () => {
    const data = await dataDir(5, 3);
    const os = new MemoryObjectStore();
    const snaps = os.snapshots('1.0');
    const src = CatalogStore.open(data);
    await snaps.take(src, path.join(dir, 'work'), '0/1', STREAM);
    await src.close();
    os.failGet = '1.0/catalog.mdb';
    const to = path.join(dir, 'restored');
    await assert.rejects(snaps.restore(to, STREAM), /chunk missing/);
    assert.deepEqual(fs.readdirSync(to), []);
    // The manifest alone, without its files, is no snapshot.
    os.failGet = null;
    os.objects.delete('1.0/catalog.mdb');
    assert.equal(await snaps.restore(to, STREAM), null);
    assert.deepEqual(fs.readdirSync(to), []);
  });

  it('when a manifest is read, then only a whole one of this version is accepted', () => {
    const good = { v: 1, shard: '0/1', stream: 'FUNNEL', stream_created: 'x', stream_seq: 5, ads: 2, dim: 4, lmdb_bytes: 10, ann_bytes: 0, created_ms: 1 };
    const enc = (o: unknown) => new TextEncoder().encode(JSON.stringify(o));
    assert.deepEqual(parseManifest(enc(good)), good);
    assert.deepEqual(parseManifest(enc({ ...good, dim: null })), { ...good, dim: null });
    assert.equal(parseManifest(new TextEncoder().encode('not json')), null);
    assert.equal(parseManifest(enc({ ...good, v: 2 })), null);
    assert.equal(parseManifest(enc({ ...good, stream_seq: -1 })), null);
    assert.equal(parseManifest(enc({ ...good, stream: 3 })), null);
    assert.equal(parseManifest(enc({ ...good, dim: 'x' })), null);
    assert.equal(parseManifest(enc(null)), null);
  });
});
