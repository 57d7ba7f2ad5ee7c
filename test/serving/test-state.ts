import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import pino from 'pino';
import { defaultConfig } from '../../src/config/load';
import { catalogRowSchema } from '../../src/store/catalog-schema';
import { CatalogStore } from '../../src/store/catalog-store';
import { ingestCatalog } from '../../src/store/ingest';
import { ServingState } from '../../src/serving/state';
import { BitsetPool, Eligibility } from '../../src/stages/eligibility';
import { makeContext } from '../fixtures/stage-context';
import { row, tempDir, writeCatalog } from '../fixtures/catalog';

const log = pino({ level: 'silent' });
const bit = (bits: Uint32Array, id: number) => ((bits[id >>> 5] >>> (id & 31)) & 1) === 1;

describe('ServingState', () => {
  let dir: string;
  let data: string;
  beforeEach(() => {
    dir = tempDir('state');
    data = path.join(dir, 'data');
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  async function open(rows: Record<string, unknown>[]): Promise<ServingState> {
    await ingestCatalog(writeCatalog(dir, 'c.jsonl', rows), data);
    return ServingState.open(data, defaultConfig(), log);
  }

  it('when loaded, then the servable set holds exactly the active, in-flight, under-budget ads', async () => {
    const now = Date.now();
    const s = await open([
      row(0),
      row(1, 4, { status: 'paused' }),
      row(2, 4, { start_time: new Date(now + 3_600_000).toISOString() }),
      row(3, 4, { end_time: new Date(now - 3_600_000).toISOString(), start_time: new Date(now - 7_200_000).toISOString() }),
      row(4, 4, { daily_budget_micros: 0 }),
      row(5),
    ]);
    try {
      const ids = ['ad-0', 'ad-1', 'ad-2', 'ad-3', 'ad-4', 'ad-5'].map((a) => s.ads.idOf(a));
      assert.deepEqual(
        ids.map((id) => bit(s.servable.bits, id)),
        [true, false, false, false, false, true],
      );
      assert.equal(s.servable.count, 2);
    } finally {
      await s.close();
    }
  });

  it('when Admin writes are applied, then the in-memory state and the store agree at once', async () => {
    const s = await open([row(0), row(1)]);
    try {
      const before = s.servable.bits;
      const r = await s.upsertAds([catalogRowSchema.parse(row(7, 4, { targeting: [{ country: { any_of: ['NZ'] } }] }))]);
      assert.equal(r.inserted, 1);
      const id7 = s.ads.idOf('ad-7');
      assert.ok(id7 >= 0 && s.ann.has(id7) && s.targeting.has(id7) && bit(s.servable.bits, id7));
      assert.notEqual(s.servable.bits, before, 'the servable bitset is replaced, never modified in place');
      const m = s.targeting.match({ country: ['NZ'] });
      assert.ok(bit(m.bits, id7));

      const paused = await s.setStatus(['ad-0', 'nope'], 'paused');
      assert.deepEqual(paused.unknown, ['nope']);
      assert.equal(bit(s.servable.bits, s.ads.idOf('ad-0')), false);
      assert.equal(s.store.getAd('ad-0')?.status, 'paused');

      await s.reportSpend([{ ad_id: 'ad-1', spend_micros: 5 }]);
      assert.equal(bit(s.servable.bits, s.ads.idOf('ad-1')), true, 'unlimited budget');

      const id1 = s.ads.idOf('ad-1');
      const del = await s.deleteAds(['ad-1']);
      assert.equal(del.count, 1);
      assert.equal(s.ads.idOf('ad-1'), -1);
      assert.equal(s.ann.has(id1), false);
      assert.equal(bit(s.servable.bits, id1), false);
      assert.equal(s.store.getAd('ad-1'), undefined);
    } finally {
      await s.close();
    }
  });

  it('when a flight opens or closes, then tick() moves the ad in or out of the servable set', async () => {
    const now = Date.now();
    const s = await open([row(0, 4, { start_time: new Date(now + 60_000).toISOString(), end_time: new Date(now + 120_000).toISOString() })]);
    try {
      const id = s.ads.idOf('ad-0');
      assert.equal(bit(s.servable.bits, id), false);
      s.tick(now + 61_000);
      assert.equal(bit(s.servable.bits, id), true);
      s.tick(now + 121_000);
      assert.equal(bit(s.servable.bits, id), false);
    } finally {
      await s.close();
    }
  });

  it('when events and spend were recorded, then a reopened state has the same popularity and spend', async () => {
    let s = await open([row(0, 4, { daily_budget_micros: 100 }), row(1)]);
    const t = Date.now();
    await s.recordEvents([
      { ad_id: 'ad-1', type: 'CLICK', timestamp_ms: t, attributes: { country: ['US'] } },
      { ad_id: 'ad-0', type: 'IMPRESSION', timestamp_ms: t, attributes: {} },
    ]);
    await s.reportSpend([{ ad_id: 'ad-0', spend_micros: 100 }]);
    const rate = s.popularity.rate(s.ads.idOf('ad-1'), t);
    await s.close();
    s = await ServingState.open(data, defaultConfig(), log);
    try {
      assert.deepEqual(Array.from(s.popularity.ranked()), [s.ads.idOf('ad-1'), s.ads.idOf('ad-0')]);
      assert.deepEqual(Array.from(s.popularity.ranked({ attribute: 'country', value: 'US' })), [s.ads.idOf('ad-1')]);
      assert.ok(Math.abs(s.popularity.rate(s.ads.idOf('ad-1'), t) - rate) < 1e-12);
      assert.equal(bit(s.servable.bits, s.ads.idOf('ad-0')), false, 'budget exhausted survives the restart');
    } finally {
      await s.close();
    }
  });

  it('when the data directory starts empty, then the first upsert sets the dimension and is searchable', async () => {
    CatalogStore.open(data, { create: true }).close();
    const s = await ServingState.open(data, defaultConfig(), log);
    try {
      await s.upsertAds([catalogRowSchema.parse(row(1, 6))]);
      assert.equal(s.dim, 6);
      assert.equal(s.ann.dim, 6);
      assert.equal(s.ann.size, 1);
    } finally {
      await s.close();
    }
  });

  it('when the Eligibility stage runs, then it is targeting AND servable minus every exclusion', async () => {
    const s = await open([
      row(0, 4, { targeting: [{ country: { any_of: ['US'] } }] }),
      row(1, 4, { status: 'paused' }),
      row(2),
      row(3),
      row(4, 4, { targeting: [{ country: { any_of: ['DE'] } }] }),
      row(5),
    ]);
    try {
      const pool = new BitsetPool();
      const stage = new Eligibility(s, pool, () => undefined);
      const ctx = makeContext({
        ads: s.ads,
        query: { attributes: { country: ['US'] }, excludeAdIds: new Set(['ad-2']), excludeAdvertiserIds: new Set([s.ads.advertiserId(s.ads.idOf('ad-3'))]) },
      });
      const e = await stage.run(ctx);
      const got = [...s.ads.ids()].filter((id) => bit(e.bits, id)).map((id) => s.ads.adId(id)).sort();
      const adv3 = s.ads.advertiserId(s.ads.idOf('ad-3'));
      const want = ['ad-0', 'ad-5'].filter((a) => s.ads.advertiserId(s.ads.idOf(a)) !== adv3);
      assert.deepEqual(got, want);
      assert.equal(e.count, want.length);
    } finally {
      await s.close();
    }
  });

  describe('two processes on one data directory (--workers)', () => {
    /** Everything a Retrieve reads, per ad_id, in a form two states can be compared by. */
    // One instant for every snapshot: popularity rates decay with time, so two states read a few
    // milliseconds apart would differ in the last digits although they hold the same counters.
    const SNAPSHOT_AT = Date.now() + 60_000;
    function snapshot(s: ServingState): Record<string, unknown> {
      const out: Record<string, unknown> = {};
      const now = SNAPSHOT_AT;
      const match = s.targeting.match({ country: ['NZ'] });
      const ranked = Array.from(s.popularity.ranked()).map((id) => s.ads.adId(id));
      for (const id of s.ads.ids()) {
        const adId = s.ads.adId(id);
        out[adId] = {
          id,
          bid: s.ads.bidMicros(id),
          active: s.ads.isActive(id),
          category: s.ads.category(id),
          servable: bit(s.servable.bits, id),
          nz: bit(match.bits, id),
          vector: s.ann.has(id) ? Array.from(s.ann.getVector(id)) : null,
          rate: s.popularity.rate(id, now).toFixed(9),
        };
      }
      out.ranked = ranked;
      out.seq = s.seq;
      return out;
    }

    it('when one state writes, then the other catches up from the journal to the same in-memory state, freed ids reused included', async () => {
      await ingestCatalog(writeCatalog(dir, 'c.jsonl', [row(0), row(1), row(2, 4, { daily_budget_micros: 100 })]), data);
      const a = await ServingState.open(data, defaultConfig(), log);
      const b = await ServingState.open(data, defaultConfig(), log, { checkpoints: false });
      try {
        await a.upsertAds([catalogRowSchema.parse(row(7, 4, { targeting: [{ country: { any_of: ['NZ'] } }] }))]);
        await a.setStatus(['ad-0'], 'paused');
        await a.reportSpend([{ ad_id: 'ad-2', spend_micros: 100 }]);
        await a.recordEvents([{ ad_id: 'ad-1', type: 'CLICK', timestamp_ms: Date.now(), attributes: {} }]);
        // ad-1's internal id is freed and taken by ad-9 within one catch-up.
        await a.deleteAds(['ad-1']);
        await a.upsertAds([catalogRowSchema.parse(row(9, 4, { bid_micros: 77 }))]);
        assert.equal(b.seq, 1, 'b has not caught up yet');
        assert.notDeepEqual(snapshot(b), snapshot(a));
        assert.equal(await b.catchUp(), a.seq);
        assert.deepEqual(snapshot(b), snapshot(a));
        // And the other way round: b's own writes, a catches up.
        await b.upsertAds([catalogRowSchema.parse(row(0, 4, { bid_micros: 5, targeting: [{ country: { any_of: ['NZ'] } }] }))]);
        await b.setStatus(['ad-0'], 'active');
        await a.catchUp();
        assert.deepEqual(snapshot(a), snapshot(b));
      } finally {
        await b.close();
        await a.close();
      }
    });

    it('when both states record events on the same ad, then no event is lost (planned from the stored sums)', async () => {
      await ingestCatalog(writeCatalog(dir, 'c.jsonl', [row(0)]), data);
      const a = await ServingState.open(data, defaultConfig(), log);
      const b = await ServingState.open(data, defaultConfig(), log, { checkpoints: false });
      const single = await (async () => {
        const d2 = path.join(dir, 'single');
        await ingestCatalog(writeCatalog(dir, 'c2.jsonl', [row(0)]), d2);
        return ServingState.open(d2, defaultConfig(), log);
      })();
      try {
        const t = Date.now();
        for (let i = 0; i < 6; i++) {
          const e = [{ ad_id: 'ad-0', type: i % 2 ? ('CLICK' as const) : ('IMPRESSION' as const), timestamp_ms: t + i, attributes: {} }];
          // Neither catches up in between: each plans from the store, not from its own memory.
          await (i % 2 ? a : b).recordEvents(e);
          await single.recordEvents(e);
        }
        await a.catchUp();
        await b.catchUp();
        const want = single.popularity.decayed(single.ads.idOf('ad-0'), t);
        for (const s of [a, b]) {
          const got = s.popularity.decayed(s.ads.idOf('ad-0'), t);
          assert.ok(Math.abs(got.impressions - want.impressions) < 1e-9 && Math.abs(got.clicks - want.clicks) < 1e-9, JSON.stringify({ got, want }));
        }
        assert.ok(want.clicks > 2.9 && want.impressions > 2.9);
      } finally {
        await single.close();
        await b.close();
        await a.close();
      }
    });

    it('when another state reports spend or records events, then catching up leaves the records, and so the eligibility epochs, as they were', async () => {
      await ingestCatalog(writeCatalog(dir, 'c.jsonl', [row(0, 4, { daily_budget_micros: 100 }), row(1)]), data);
      const a = await ServingState.open(data, defaultConfig(), log);
      const b = await ServingState.open(data, defaultConfig(), log, { checkpoints: false });
      try {
        const adsEpoch = b.ads.epoch;
        const targetingEpoch = b.targeting.epoch;
        await a.reportSpend([{ ad_id: 'ad-0', spend_micros: 100 }]);
        await a.recordEvents([{ ad_id: 'ad-1', type: 'CLICK', timestamp_ms: Date.now(), attributes: {} }]);
        await b.catchUp();
        assert.deepEqual(snapshot(b), snapshot(a), 'the spend and the click are applied');
        assert.equal(b.ads.epoch, adsEpoch);
        assert.equal(b.targeting.epoch, targetingEpoch);
        await a.setStatus(['ad-1'], 'paused');
        await b.catchUp();
        assert.deepEqual(snapshot(b), snapshot(a));
        assert.ok(b.ads.epoch > adsEpoch, 'a changed record is set again');
      } finally {
        await b.close();
        await a.close();
      }
    });

    it('when the journal no longer covers the gap, then catching up re-reads every ad and still agrees', async () => {
      await ingestCatalog(writeCatalog(dir, 'c.jsonl', [row(0), row(1), row(2)]), data);
      const a = await ServingState.open(data, defaultConfig(), log);
      const b = await ServingState.open(data, defaultConfig(), log, { checkpoints: false });
      try {
        await a.deleteAds(['ad-2']);
        await a.upsertAds([catalogRowSchema.parse(row(5, 4, { targeting: [{ country: { any_of: ['NZ'] } }] }))]);
        await a.store.pruneJournal(a.seq);
        await b.catchUp();
        assert.deepEqual(snapshot(b), snapshot(a));
      } finally {
        await b.close();
        await a.close();
      }
    });
  });
});
