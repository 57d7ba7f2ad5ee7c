import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CatalogStore, DATA_FORMAT_VERSION, MARKER_FILE } from '../../src/store/catalog-store';
import { parseCatalogLine, type CatalogRow } from '../../src/store/catalog-schema';
import { row, tempDir } from '../fixtures/catalog';

const valid = (n: number, dim = 4, extra = {}): CatalogRow => {
  const r = parseCatalogLine(JSON.stringify(row(n, dim, extra)));
  if (!('row' in r)) throw new Error('bad fixture');
  return r.row;
};

describe('CatalogStore', () => {
  let tmp: string;
  beforeEach(() => {
    tmp = tempDir('store');
  });
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('when ads are upserted and removed, then reads, ids, embeddings and the change log follow', async () => {
    const store = CatalogStore.open(path.join(tmp, 'd'), { create: true });
    const w1 = await store.upsert([valid(1), valid(2)]);
    assert.deepEqual(w1, { seq: 1, inserted: 2, updated: 0, removed: 0 });
    assert.equal(store.dim, 4);
    const a1 = store.getAd('ad-1')!;
    assert.equal(store.getAdById(a1.id)!.ad_id, 'ad-1');
    assert.deepEqual(Array.from(store.getEmbedding(a1.id)!), Array.from(Float32Array.from(valid(1).embedding)));
    const w2 = await store.upsert([valid(1, 4, { bid_micros: 5 })]);
    assert.equal(w2.updated, 1);
    assert.equal(store.getAd('ad-1')!.bid_micros, 5);
    assert.equal(store.getAd('ad-1')!.id, a1.id, 'an update keeps the internal id');
    await store.remove(['ad-1', 'ad-missing']);
    assert.equal(store.getAd('ad-1'), undefined);
    assert.equal(store.count, 1);
    const reused = await store.upsert([valid(3)]);
    assert.equal(reused.inserted, 1);
    assert.equal(store.getAd('ad-3')!.id, a1.id, 'a freed id is reused');
    assert.equal(store.seq, 4);
    assert.deepEqual(store.changesSince(1), [
      { op: 'upsert', id: a1.id },
      { op: 'remove', id: a1.id },
      { op: 'upsert', id: a1.id },
    ]);
    await store.pruneLog(2);
    assert.equal(store.changesSince(1), null, 'a pruned log cannot replay from before it');
    assert.equal(store.changesSince(2)!.length, 2);
    await store.close();
  });

  it('when spend and engagement are reported, then they are kept per ad and day, and go with the ad', async () => {
    const store = CatalogStore.open(path.join(tmp, 'd'), { create: true });
    await store.upsert([valid(1), valid(2)]);
    const day1 = Date.parse('2026-11-23T10:00:00Z');
    const day2 = Date.parse('2026-11-24T00:30:00Z');
    const seq = store.seq;
    assert.deepEqual(await store.reportSpend([{ ad_id: 'ad-1', spend_micros: 500 }, { ad_id: 'nope', spend_micros: 1 }], day1), { seq: seq + 1, applied: 1, unknown: 1 });
    await store.reportSpend([{ ad_id: 'ad-1', spend_micros: 700 }], day1);
    assert.equal(store.spendToday('ad-1', day1), 700, 'cumulative: a later report replaces');
    assert.equal(store.spendToday('ad-1', day2), 0, 'a new UTC day starts at zero');
    assert.equal(store.spendToday('ad-2', day1), 0);
    await store.recordEvents([
      { ad_id: 'ad-2', type: 'IMPRESSION', timestamp_ms: 10 },
      { ad_id: 'ad-2', type: 'CLICK', timestamp_ms: 30 },
      { ad_id: 'ad-2', type: 'IMPRESSION', timestamp_ms: 20 },
    ]);
    assert.deepEqual(store.engagement('ad-2'), { impressions: 2, clicks: 1, last_ms: 30 });
    await store.remove(['ad-1', 'ad-2']);
    await store.upsert([valid(1), valid(2)]);
    assert.equal(store.spendToday('ad-1', day1), 0, 'a deleted ad leaves no spend behind');
    assert.deepEqual(store.engagement('ad-2'), { impressions: 0, clicks: 0, last_ms: 0 });
    await store.close();
  });

  it('when any write commits, then the journal names the ads it touched, in sequence order, and writes that change no vector leave no log entry', async () => {
    const store = CatalogStore.open(path.join(tmp, 'd'), { create: true });
    await store.upsert([valid(1), valid(2)]);
    const base = store.seq;
    await store.setStatus(['ad-1', 'nope'], 'paused');
    await store.reportSpend([{ ad_id: 'ad-2', spend_micros: 5 }]);
    await store.recordEvents([{ ad_id: 'ad-1', type: 'CLICK', timestamp_ms: 1 }]);
    await store.remove(['ad-2']);
    await store.upsert([valid(3)]);
    assert.equal(store.seq, base + 5, 'every Admin write, spend and events included, bumps the sequence number');
    assert.deepEqual(
      store.journalSince(base)!.map((j) => [j.seq, j.entry.ads, j.entry.vectors]),
      [
        [base + 1, ['ad-1'], false],
        [base + 2, ['ad-2'], false],
        [base + 3, ['ad-1'], false],
        [base + 4, ['ad-2'], true],
        [base + 5, ['ad-3'], true],
      ],
    );
    // Status, spend and events changed no vector: the ANN log holds the remove and the upsert only.
    assert.deepEqual(store.changesSince(base)!.map((c) => c.op), ['remove', 'upsert']);
    await store.pruneJournal(base + 2);
    assert.equal(store.journalSince(base), null, 'a pruned journal says it cannot cover the gap');
    assert.deepEqual(store.journalSince(base + 2)!.map((j) => j.seq), [base + 3, base + 4, base + 5]);
    await store.pruneLog(base + 4);
    assert.equal(store.changesSince(base + 3), null, 'below the floor the log cannot replay');
    assert.deepEqual(store.changesSince(base + 4)!.map((c) => c.op), ['upsert']);
    assert.deepEqual(store.changesSince(store.seq), []);
    await store.close();
  });

  it('when events are recorded with a planner, then it plans from the stored records inside the transaction', async () => {
    const store = CatalogStore.open(path.join(tmp, 'd'), { create: true });
    await store.upsert([valid(1)]);
    await store.recordEvents([], [{ adId: 'ad-1', segment: '', record: { li: 3, lc: 1, hl: 60 } }]);
    let seen: unknown;
    const r = await store.recordEvents([{ ad_id: 'ad-1', type: 'CLICK', timestamp_ms: 1 }], (stored) => {
      seen = stored('ad-1', '');
      return [{ adId: 'ad-1', segment: '', record: { li: 3, lc: 2, hl: 60 } }];
    });
    assert.deepEqual(seen, { li: 3, lc: 1, hl: 60 });
    assert.equal(r.applied, 1);
    assert.deepEqual(store.popularityOf('ad-1'), [{ segment: '', record: { li: 3, lc: 2, hl: 60 } }]);
    await store.close();
  });

  it('when an upsert clashes with the dimension, then nothing of it is written', async () => {
    const store = CatalogStore.open(path.join(tmp, 'd'), { create: true });
    await store.upsert([valid(1)]);
    await assert.rejects(store.upsert([valid(2), valid(3, 5)]), { code: 'ERR_DATA_DIR', message: /dimension is 4/ });
    assert.equal(store.getAd('ad-2'), undefined);
    assert.equal(store.seq, 1);
    await store.close();
  });

  it('when the directory is missing, foreign, corrupt or newer, then open names the path and the problem', async () => {
    const missing = path.join(tmp, 'nope');
    assert.throws(() => CatalogStore.open(missing), { code: 'ERR_DATA_DIR', message: new RegExp(`${missing} does not exist`) });
    const foreign = path.join(tmp, 'foreign');
    fs.mkdirSync(foreign);
    fs.writeFileSync(path.join(foreign, 'x.txt'), 'hello');
    assert.throws(() => CatalogStore.open(foreign, { create: true }), { message: /is not a funnel data directory/ });
    const made = path.join(tmp, 'made');
    await CatalogStore.open(made, { create: true }).close();
    fs.writeFileSync(path.join(made, MARKER_FILE), JSON.stringify({ format: 'funnel-data', version: DATA_FORMAT_VERSION + 1 }));
    assert.throws(() => CatalogStore.open(made), { message: /newer than this build reads/ });
    fs.writeFileSync(path.join(made, MARKER_FILE), '{not json');
    assert.throws(() => CatalogStore.open(made), { message: /corrupt/ });
    fs.writeFileSync(path.join(made, MARKER_FILE), JSON.stringify({ format: 'something-else', version: 1 }));
    assert.throws(() => CatalogStore.open(made), { message: /not a funnel data directory/ });
    fs.writeFileSync(path.join(made, MARKER_FILE), JSON.stringify({ format: 'funnel-data', version: 1 }));
    fs.writeFileSync(path.join(made, 'catalog.mdb'), Buffer.alloc(64 * 1024, 0x5a));
    assert.throws(() => CatalogStore.open(made), (e: Error) => /corrupt/.test(e.message) && e.message.includes(made));
    const file = path.join(tmp, 'plain-file');
    fs.writeFileSync(file, '');
    assert.throws(() => CatalogStore.open(file), { message: /is not a directory/ });
  });

  it('when the writer is killed with SIGKILL mid-stream, then every acknowledged write survives', async function () {
    const dir = path.join(tmp, 'kill');
    const child = spawn(process.execPath, [path.join(__dirname, '..', 'fixtures', 'writer-child.js'), dir], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const acked: string[] = [];
    let buffered = '';
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (chunk: Buffer) => {
        buffered += chunk.toString();
        const lines = buffered.split('\n');
        buffered = lines.pop()!;
        for (const l of lines) if (l.startsWith('ack ')) acked.push(l.slice(4));
        if (acked.length >= 200 && !child.killed) child.kill('SIGKILL');
      });
      child.on('exit', (_code, signal) => (signal === 'SIGKILL' ? resolve() : reject(new Error(`child exited ${_code}`))));
    });
    assert.ok(acked.length >= 200);
    const store = CatalogStore.open(dir);
    for (const adId of acked) assert.ok(store.getAd(adId), `acknowledged ${adId} lost`);
    assert.ok(store.count >= acked.length);
    assert.equal(store.seq, store.count, 'one sequence number per committed transaction');
    await store.close();
  });
});
