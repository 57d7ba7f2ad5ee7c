import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { HnswIndex } from '../../src/native/index';
import { annPath, syncAnnIndex } from '../../src/store/ann-sync';
import { CatalogStore } from '../../src/store/catalog-store';
import { IngestError, ingestCatalog } from '../../src/store/ingest';
import { row, tempDir, writeCatalog } from '../fixtures/catalog';

describe('ingestCatalog', () => {
  let tmp: string;
  let data: string;
  beforeEach(() => {
    tmp = tempDir('ingest');
    data = path.join(tmp, 'data');
  });
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

  const rows = (from: number, to: number, dim = 8) => Array.from({ length: to - from }, (_, i) => row(from + i, dim));

  it('when a catalog is ingested, then the store and a current ANN index hold every ad', async () => {
    const file = writeCatalog(tmp, 'c.jsonl', [...rows(0, 300), '', '   ']);
    const r = await ingestCatalog(file, data, { threads: 1, ann: { metric: 'cos' } });
    assert.equal(r.rows, 300);
    assert.deepEqual([r.write.inserted, r.write.updated, r.write.removed], [300, 0, 0]);
    assert.equal(r.ann.how, 'rebuilt');
    const store = CatalogStore.open(data);
    assert.equal(store.count, 300);
    const ix = HnswIndex.load(annPath(store));
    assert.equal(ix.tag, store.seq);
    assert.equal(ix.size, 300);
    const ad = store.getAd('ad-17')!;
    const hit = ix.search(store.getEmbedding(ad.id)!, 1);
    assert.equal(hit.ids[0], ad.id, 'an ad finds itself');
    await store.close();
  });

  it('when a row is bad, then nothing is applied and every bad row is reported with its line and field', async () => {
    const first = writeCatalog(tmp, 'a.jsonl', rows(0, 10));
    await ingestCatalog(first, data, { threads: 1 });
    const lines: Array<Record<string, unknown> | string> = rows(10, 20);
    lines[2] = { ...row(12, 8), bid_micros: 'lots' };
    lines[5] = '{broken';
    lines[7] = row(3, 9); // wrong dimension
    lines.push(row(11, 8)); // duplicate ad_id
    const bad = writeCatalog(tmp, 'b.jsonl', lines);
    await assert.rejects(ingestCatalog(bad, data, { threads: 1 }), (e: IngestError) => {
      assert.ok(e instanceof IngestError);
      assert.equal(e.total, 4);
      assert.deepEqual(e.errors.map((x) => [x.line, x.field]), [
        [3, 'bid_micros'],
        [6, '(row)'],
        [8, 'embedding'],
        [11, 'ad_id'],
      ]);
      return true;
    });
    const store = CatalogStore.open(data);
    assert.equal(store.count, 10, 'nothing from the bad file');
    assert.equal(store.getAd('ad-10'), undefined);
    assert.equal(store.seq, 1);
    await store.close();
  });

  it('when more than 100 rows are bad, then the first 100 are reported and the total counted', async () => {
    const lines = Array.from({ length: 150 }, (_, i) => ({ ...row(i, 8), bid_micros: -1 }));
    const bad = writeCatalog(tmp, 'many.jsonl', lines);
    await assert.rejects(ingestCatalog(bad, data), (e: IngestError) => e.errors.length === 100 && e.total === 150);
  });

  it('when a second file upserts, then ads are updated by ad_id and the index catches up instead of rebuilding', async () => {
    await ingestCatalog(writeCatalog(tmp, 'a.jsonl', rows(0, 200)), data, { threads: 1, ann: { metric: 'l2' } });
    const moved = { ...row(5, 8), embedding: Array.from({ length: 8 }, () => 9) };
    const r = await ingestCatalog(writeCatalog(tmp, 'b.jsonl', [moved, ...rows(200, 210)]), data, { threads: 1 });
    assert.deepEqual([r.write.inserted, r.write.updated, r.write.removed], [10, 1, 0]);
    assert.equal(r.ann.how, 'caught-up');
    const store = CatalogStore.open(data);
    const ix = HnswIndex.load(annPath(store));
    assert.equal(ix.size, 210);
    const id5 = store.getAd('ad-5')!.id;
    assert.equal(ix.search(Float32Array.from(moved.embedding), 1).ids[0], id5);
    await store.close();
  });

  it('when --replace is given, then the directory holds exactly the file', async () => {
    await ingestCatalog(writeCatalog(tmp, 'a.jsonl', rows(0, 50)), data, { threads: 1 });
    const r = await ingestCatalog(writeCatalog(tmp, 'b.jsonl', rows(40, 60)), data, { replace: true, threads: 1 });
    assert.deepEqual([r.write.inserted, r.write.updated, r.write.removed], [10, 10, 40]);
    const store = CatalogStore.open(data);
    assert.equal(store.count, 20);
    assert.equal(store.getAd('ad-0'), undefined);
    assert.equal(HnswIndex.load(annPath(store)).size, 20);
    await store.close();
  });

  it('when the ANN file is stale, missing or damaged, then opening catches up or rebuilds from the store', async () => {
    await ingestCatalog(writeCatalog(tmp, 'a.jsonl', rows(0, 100)), data, { threads: 1 });
    const store = CatalogStore.open(data);
    const file = annPath(store);
    const stale = fs.readFileSync(file);
    await store.upsert([(await import('../../src/store/catalog-schema')).parseCatalogLine(JSON.stringify(row(500, 8))) as never]
      .map((p: { row: never }) => p.row));
    let r = await syncAnnIndex(store, { threads: 1 });
    assert.equal(r.how, 'caught-up');
    assert.equal(r.index.size, 101);
    await store.pruneLog(store.seq);
    r = await syncAnnIndex(store, { threads: 1 });
    assert.equal(r.how, 'rebuilt', 'the stale file cannot replay a pruned log');
    assert.match(r.reason!, /change log/);
    fs.writeFileSync(file, stale.subarray(0, 5000));
    r = await syncAnnIndex(store, { threads: 1, save: true });
    assert.equal(r.how, 'rebuilt');
    assert.match(r.reason!, /unusable/);
    fs.rmSync(file);
    r = await syncAnnIndex(store, { threads: 1 });
    assert.equal(r.how, 'rebuilt');
    assert.equal(r.reason, 'no index file');
    assert.equal(r.index.size, 101);
    await store.close();
  });

  it('when the catalog file is missing, then the error names it', async () => {
    await assert.rejects(ingestCatalog(path.join(tmp, 'none.jsonl'), data), /cannot read catalog .*none\.jsonl/);
  });
});
