import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { TargetingIndex, type Conjunction, type RequestAttributes, type TargetingMatchOptions } from '../../src/native/index';
import type { EligibleSet, RetrieveQuery } from '../../src/pipeline/types';
import type { AdTable } from '../../src/serving/ad-table';
import { attributeSignature, BitsetPool, Eligibility, type EligibilityCacheOptions, type EligibilitySource } from '../../src/stages/eligibility';
import { evaluateTargeting } from '../../src/store/targeting-eval';
import { adRecord, adTable, makeContext, type AdSpec } from '../fixtures/stage-context';

const bit = (bits: Uint32Array, id: number) => id >>> 5 < bits.length && ((bits[id >>> 5] >>> (id & 31)) & 1) === 1;

function bitsOf(ids: Iterable<number>, capacity: number): { bits: Uint32Array; count: number } {
  const bits = new Uint32Array(Math.max(1, Math.ceil(capacity / 32)));
  let count = 0;
  for (const id of ids) {
    if (bit(bits, id)) continue;
    bits[id >>> 5] |= 1 << (id & 31);
    count++;
  }
  return { bits, count };
}

/** A serving state in miniature: ads, their targeting (native index and a copy for the direct evaluator), a servable array swapped on every change, and a count of native matches. */
class World implements EligibilitySource {
  readonly targeting: TargetingIndex;
  readonly ads: AdTable;
  servable: { bits: Uint32Array; count: number };
  readonly rules = new Map<number, Conjunction[] | null>();
  matches = 0;

  constructor(specs: (AdSpec & { rules?: Conjunction[] | null })[], servableIds?: number[]) {
    this.ads = adTable(specs);
    const index = new TargetingIndex();
    for (const s of specs) {
      index.set(s.id, s.rules ?? undefined);
      this.rules.set(s.id, s.rules ?? null);
    }
    // The index, counting the native matches (the cache's hits make none).
    this.targeting = {
      get size() {
        return index.size;
      },
      get capacity() {
        return index.capacity;
      },
      get epoch() {
        return index.epoch;
      },
      set: (id, t) => index.set(id, t),
      remove: (id) => index.remove(id),
      has: (id) => index.has(id),
      match: (attrs, options) => index.match(attrs, options),
      matchIds: (attrs, options) => index.matchIds(attrs, options),
      matchAsync: (attrs: RequestAttributes, options?: TargetingMatchOptions) => {
        this.matches++;
        return index.matchAsync(attrs, options);
      },
      memoryBytes: () => index.memoryBytes(),
    };
    this.servable = bitsOf(servableIds ?? specs.map((s) => s.id), this.ads.capacity);
  }

  /** A status, spend or flight change: a new servable array (never modified in place). */
  setServable(ids: number[]): void {
    this.servable = bitsOf(ids, Math.max(this.ads.capacity, this.targeting.capacity));
  }

  /** An upsert: new targeting for `id` (the table's epoch moves, as ServingState does it). */
  retarget(id: number, rules: Conjunction[] | null): void {
    this.ads.set(adRecord({ id }));
    this.targeting.set(id, rules ?? undefined);
    this.rules.set(id, rules);
  }

  /** A delete, as ServingState does it: table, index, servable array. */
  remove(id: number): void {
    this.ads.remove(id);
    if (this.targeting.has(id)) this.targeting.remove(id);
    this.rules.delete(id);
    const ids: number[] = [];
    for (let i = 0; i < this.servable.bits.length * 32; i++) if (i !== id && bit(this.servable.bits, i)) ids.push(i);
    this.setServable(ids);
  }

  /** The eligible set by definition: servable, targeting holds, not excluded. */
  expected(q: RetrieveQuery): Set<number> {
    const out = new Set<number>();
    for (const id of this.ads.ids()) {
      if (!bit(this.servable.bits, id)) continue;
      if (!evaluateTargeting(this.rules.get(id) ?? undefined, q.attributes)) continue;
      if (q.excludeAdIds.has(this.ads.adId(id))) continue;
      if (q.excludeAdvertiserIds.has(this.ads.advertiserId(id))) continue;
      if (q.blockedCategories.has(this.ads.category(id))) continue;
      out.add(id);
    }
    return out;
  }
}

/** The stage over `world` with a pool, and the buffers each request holds (released by `end`). */
function stageOf(world: World, options?: EligibilityCacheOptions) {
  const pool = new BitsetPool();
  const held = new Map<object, Uint32Array[]>();
  const stage = new Eligibility(
    world,
    pool,
    (ctx, buf) => {
      const list = held.get(ctx.query) ?? [];
      list.push(buf);
      held.set(ctx.query, list);
    },
    options,
  );
  const run = async (q: Partial<RetrieveQuery>) => {
    const ctx = makeContext({ ads: world.ads, query: q, eligible: null });
    const e = await stage.run(ctx);
    return { e, ctx, end: () => (held.get(ctx.query) ?? []).forEach((b) => pool.release(b)) };
  };
  return { stage, pool, run };
}

function assertSet(e: EligibleSet, want: Set<number>, capacity: number, what = ''): void {
  const got: number[] = [];
  for (let id = 0; id < Math.max(capacity, e.bits.length * 32); id++) if (bit(e.bits, id)) got.push(id);
  assert.deepEqual(got, [...want].sort((a, b) => a - b), what);
  assert.equal(e.count, want.size, `${what} count`);
}

const US: Conjunction[] = [{ country: { any_of: ['US'] } }];
const DE: Conjunction[] = [{ country: { any_of: ['DE'] } }];

describe('Eligibility', () => {
  describe('attributeSignature', () => {
    it('when names and values come in another order or repeat, then the signature is the same', () => {
      assert.equal(attributeSignature({ b: ['y', 'x', 'y'], a: ['z'] }), attributeSignature({ a: ['z'], b: ['x', 'y'] }));
      assert.equal(attributeSignature({ a: ['z'], gone: undefined }), attributeSignature({ a: ['z'] }));
    });

    it('when values differ, move between names, or a name has [] instead of nothing, then signatures differ', () => {
      const sigs = [{ a: ['x'] }, { a: ['x', 'y'] }, { b: ['x'] }, { a: ['x'], b: [] }, { a: [] }, {}, { 'a"': ['x'] }, { a: ['x,y'] }, { a: ['x', ',y'] }].map((a) =>
        attributeSignature(a),
      );
      assert.equal(new Set(sigs).size, sigs.length);
    });

    it('when a value is not a list of strings, then there is no signature (the index reports the error)', () => {
      assert.equal(attributeSignature({ a: 'x' as unknown as string[] }), null);
      assert.equal(attributeSignature({ a: [1 as unknown as string] }), null);
    });
  });

  describe('cache', () => {
    it('when a request repeats an attribute signature in the same data epoch, then it is answered from the cache with no native call', async () => {
      const world = new World([{ id: 0, rules: US }, { id: 1, rules: DE }, { id: 2 }]);
      const { stage, run } = stageOf(world);
      const a = await run({ attributes: { country: ['US'], platform: ['ios', 'web'] } });
      const b = await run({ attributes: { platform: ['web', 'ios', 'web'], country: ['US'] } });
      assert.equal(world.matches, 1);
      assert.deepEqual(stage.stats, { hits: 1, misses: 1, shared: 0, evictions: 0 });
      assert.equal(a.ctx.notes.get('cache'), 'miss');
      assert.equal(b.ctx.notes.get('cache'), 'hit');
      assertSet(b.e, new Set([0, 2]), 3);
      assert.equal(b.e.epoch, a.e.epoch);
      assert.deepEqual(b.ctx.dropped, a.ctx.dropped);
    });

    it('when the servable array is replaced (status, spend, flight), then the cached targeting match is reused and the answer sees the change', async () => {
      const world = new World([{ id: 0, rules: US }, { id: 1, rules: US }, { id: 2 }, { id: 3, rules: DE }]);
      const { stage, run } = stageOf(world);
      const q = { attributes: { country: ['US'] } };
      assertSet((await run(q)).e, new Set([0, 1, 2]), 4);
      world.setServable([0, 2, 3]);
      const after = await run(q);
      assertSet(after.e, new Set([0, 2]), 4, 'after a status change');
      assert.equal(after.ctx.notes.get('cache'), 'hit');
      assert.deepEqual(after.ctx.dropped, { not_servable: 1, targeting: 1 });
      world.setServable([]);
      assertSet((await run(q)).e, new Set(), 4, 'nothing servable');
      assert.equal(world.matches, 1);
      assert.deepEqual(stage.stats, { hits: 2, misses: 1, shared: 0, evictions: 0 });
    });

    it('when an ad is upserted or deleted, then the next request matches again and sees the change', async () => {
      const world = new World([{ id: 0, rules: US }, { id: 1, rules: US }, { id: 2 }]);
      const { run } = stageOf(world);
      const q = { attributes: { country: ['US'] } };
      assertSet((await run(q)).e, new Set([0, 1, 2]), 3);
      world.retarget(2, DE);
      const after = await run(q);
      assertSet(after.e, new Set([0, 1]), 3, 'after an upsert');
      assert.equal(after.e.epoch, world.ads.epoch);
      assert.equal(after.ctx.notes.get('cache'), 'miss');
      world.remove(1);
      assertSet((await run(q)).e, new Set([0]), 3, 'after a delete');
      assert.equal(world.matches, 3);
    });

    it('when the targeting index alone changes (its epoch moves), then the cache is dropped', async () => {
      const world = new World([{ id: 0, rules: US }, { id: 1 }]);
      const { run } = stageOf(world);
      const q = { attributes: { country: ['US'] } };
      await run(q);
      world.targeting.set(1, DE);
      world.rules.set(1, DE);
      assertSet((await run(q)).e, new Set([0]), 2);
      assert.equal(world.matches, 2);
    });

    it('when a request excludes ads, advertisers or categories, then they are removed from its copy only, never from the cached match', async () => {
      const world = new World([{ id: 0 }, { id: 1 }, { id: 2 }, { id: 3 }]);
      const { run } = stageOf(world);
      const plain = await run({});
      const excluded = await run({ excludeAdIds: new Set(['ad1']), excludeAdvertiserIds: new Set(['adv2']), blockedCategories: new Set(['cat3']) });
      const again = await run({});
      assert.equal(world.matches, 1);
      assertSet(excluded.e, new Set([0]), 4);
      assert.notEqual(excluded.e.bits, plain.e.bits);
      assert.deepEqual(excluded.ctx.dropped, { excluded_ad: 1, excluded_advertiser: 1, blocked_category: 1 });
      assertSet(plain.e, new Set([0, 1, 2, 3]), 4, 'the shared match is untouched');
      assertSet(again.e, new Set([0, 1, 2, 3]), 4);
    });

    it('when there are more signatures than maxEntries or their bitsets pass maxBytes, then the least recently used are evicted', async () => {
      const world = new World([{ id: 0 }]);
      const { stage, run } = stageOf(world, { maxEntries: 2 });
      for (const c of ['a', 'b', 'a', 'c', 'a', 'b']) await run({ attributes: { c: [c] } });
      // a miss, b miss, a hit, c miss (evicts b), a hit, b miss (evicts c)
      assert.deepEqual(stage.stats, { hits: 2, misses: 4, shared: 0, evictions: 2 });
      assert.equal(stage.cacheSize.entries, 2);
      const bytes = stageOf(world, { maxBytes: 256 });
      for (const c of ['a', 'b', 'c']) await bytes.run({ attributes: { c: [c] } });
      assert.ok(bytes.stage.cacheSize.bytes <= 256);
      assert.equal(bytes.stage.cacheSize.entries, 2, 'each answer takes the pool minimum of 32 words (128 bytes)');
    });

    it('when maxEntries is 0, then every request matches on its own', async () => {
      const world = new World([{ id: 0 }]);
      const { stage, run } = stageOf(world, { maxEntries: 0 });
      await run({});
      await run({});
      assert.equal(world.matches, 2);
      assert.equal(stage.cacheSize.entries, 0);
    });

    it('when requests with one signature arrive while its match runs, then they share one native call', async () => {
      const world = new World([{ id: 0, rules: US }, { id: 1 }]);
      const { stage, run } = stageOf(world);
      const all = await Promise.all([run({ attributes: { country: ['US'] } }), run({ attributes: { country: ['US'] } }), run({ attributes: { country: ['US'] } })]);
      assert.equal(world.matches, 1);
      assert.deepEqual(stage.stats, { hits: 0, misses: 1, shared: 2, evictions: 0 });
      for (const r of all) assertSet(r.e, new Set([0, 1]), 2);
    });

    it('when the servable ads change while a match runs, then its answer sees the new ones and is cached', async () => {
      const world = new World([{ id: 0 }, { id: 1 }]);
      const { stage, run } = stageOf(world);
      const pending = run({});
      world.setServable([1]);
      assertSet((await pending).e, new Set([1]), 2, 'AND-ed with the servable ads when the match ends');
      assert.equal(stage.cacheSize.entries, 1);
      assertSet((await run({})).e, new Set([1]), 2);
      assert.equal(world.matches, 1);
    });

    it('when an ad is upserted while a match runs, then its answer is used by that request (with the epoch from before) but not cached', async () => {
      const world = new World([{ id: 0 }, { id: 1 }]);
      const { stage, run } = stageOf(world);
      const epoch = world.ads.epoch;
      const pending = run({ attributes: { country: ['US'] } });
      world.retarget(1, DE);
      const first = await pending;
      assert.equal(first.e.epoch, epoch, 'Filters drop ads set after it');
      assert.equal(stage.cacheSize.entries, 0);
      assertSet((await run({ attributes: { country: ['US'] } })).e, new Set([0]), 2);
      assert.equal(world.matches, 2);
    });

    it('when the index refuses the attributes, then the stage fails and nothing is cached', async () => {
      const world = new World([{ id: 0 }]);
      const { stage, run } = stageOf(world);
      await assert.rejects(run({ attributes: { a: [undefined as unknown as string] } }));
      assert.equal(stage.cacheSize.entries, 0);
    });
  });

  describe('BitsetPool', () => {
    it('when a buffer has several leases, then it is reused only after the last is released', () => {
      const pool = new BitsetPool();
      const a = pool.acquire(10);
      pool.retain(a);
      pool.release(a);
      assert.notEqual(pool.acquire(10), a, 'still leased once');
      pool.release(a);
      assert.equal(pool.acquire(10), a);
    });
  });

  it('property: whatever requests, exclusions, writes, cache bounds and release times, every answer is the eligible set by definition and stays so while held', async () => {
    const values = ['x', 'y', 'z'];
    const attr = fc.constantFrom('a', 'b');
    const predicate = fc
      .record({ any_of: fc.option(fc.subarray(values, { minLength: 1 }), { nil: undefined }), none_of: fc.option(fc.subarray(values, { minLength: 1 }), { nil: undefined }) })
      .filter((p) => p.any_of !== undefined || p.none_of !== undefined)
      .map((p) => Object.fromEntries(Object.entries(p).filter(([, v]) => v !== undefined)));
    const conjunction = fc.dictionary(attr, predicate, { maxKeys: 2 });
    const rules = fc.option(fc.array(conjunction, { minLength: 1, maxLength: 2 }), { nil: null });
    const attributes = fc.dictionary(attr, fc.array(fc.constantFrom(...values), { maxLength: 3 }), { maxKeys: 2 });
    const op = fc.oneof(
      { weight: 6, arbitrary: fc.record({ kind: fc.constant('request' as const), attributes, exclude: fc.subarray([0, 1, 2, 3, 4, 5]), advertiser: fc.option(fc.nat(5)), category: fc.option(fc.nat(5)), keep: fc.boolean() }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('servable' as const), ids: fc.subarray([0, 1, 2, 3, 4, 5, 6, 7]) }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('retarget' as const), id: fc.nat(7), rules }) },
      { weight: 1, arbitrary: fc.record({ kind: fc.constant('release' as const) }) },
    );
    await fc.assert(
      fc.asyncProperty(fc.array(rules, { minLength: 8, maxLength: 8 }), fc.array(op, { maxLength: 30 }), fc.integer({ min: 0, max: 3 }), async (ads, ops, maxEntries) => {
        const world = new World(ads.map((r, id) => ({ id, rules: r })));
        const { run } = stageOf(world, { maxEntries, maxBytes: 3 * 128 });
        const held: { e: EligibleSet; want: Set<number>; end: () => void }[] = [];
        for (const o of ops) {
          if (o.kind === 'servable') world.setServable(o.ids);
          else if (o.kind === 'retarget') world.retarget(o.id, o.rules);
          else if (o.kind === 'release') held.splice(0).forEach((h) => h.end());
          else {
            const q = {
              attributes: o.attributes,
              excludeAdIds: new Set(o.exclude.map((i) => `ad${i}`)),
              excludeAdvertiserIds: new Set(o.advertiser === null ? [] : [`adv${o.advertiser}`]),
              blockedCategories: new Set(o.category === null ? [] : [`cat${o.category}`]),
            };
            const r = await run(q);
            const want = world.expected(r.ctx.query);
            assertSet(r.e, want, 8, JSON.stringify(o));
            if (o.keep) held.push({ e: r.e, want, end: r.end });
            else r.end();
          }
          for (const h of held) assertSet(h.e, h.want, 8, 'a held answer is never overwritten');
        }
      }),
      { numRuns: 300 },
    );
  });

  it('property: with random status, spend, flight (time), upsert and delete writes between requests (some while a match runs), every answer equals the direct evaluator, and only upserts and deletes cost a native match', async () => {
    const values = ['x', 'y', 'z'];
    const attr = fc.constantFrom('a', 'b');
    const predicate = fc
      .record({ any_of: fc.option(fc.subarray(values, { minLength: 1 }), { nil: undefined }), none_of: fc.option(fc.subarray(values, { minLength: 1 }), { nil: undefined }) })
      .filter((p) => p.any_of !== undefined || p.none_of !== undefined)
      .map((p) => Object.fromEntries(Object.entries(p).filter(([, v]) => v !== undefined)));
    const rules = fc.option(fc.array(fc.dictionary(attr, predicate, { maxKeys: 2 }), { minLength: 1, maxLength: 2 }), { nil: null });
    const HOUR = 3_600_000;
    const ad = fc.record({
      rules,
      active: fc.boolean(),
      start: fc.option(fc.integer({ min: 0, max: 60 }).map((h) => h * HOUR)),
      hours: fc.option(fc.integer({ min: 1, max: 60 })),
      budget: fc.option(fc.constantFrom(0, 100, 1000)),
      advertiser: fc.nat(3),
    });
    const attributes = fc.dictionary(attr, fc.array(fc.constantFrom(...values), { maxLength: 3 }), { maxKeys: 2 });
    const id = fc.nat(11);
    const servableWrite = fc.oneof(
      fc.record({ kind: fc.constant('status' as const), id, active: fc.boolean() }),
      fc.record({ kind: fc.constant('spend' as const), id, micros: fc.constantFrom(0, 50, 100, 500, 5000) }),
      fc.record({ kind: fc.constant('tick' as const), ms: fc.integer({ min: 1, max: 30 * HOUR }) }),
    );
    const targetingWrite = fc.oneof(fc.record({ kind: fc.constant('upsert' as const), id, ad }), fc.record({ kind: fc.constant('delete' as const), id }));
    const op = fc.oneof(
      { weight: 6, arbitrary: fc.record({ kind: fc.constant('request' as const), attributes, exclude: fc.subarray([0, 1, 2, 3]), advertiser: fc.option(fc.nat(3)), during: fc.option(servableWrite) }) },
      { weight: 3, arbitrary: servableWrite },
      { weight: 1, arbitrary: targetingWrite },
    );
    await fc.assert(
      fc.asyncProperty(fc.array(ad, { minLength: 12, maxLength: 12 }), fc.array(op, { maxLength: 40 }), fc.constantFrom(0, 2, 1024), async (initial, ops, maxEntries) => {
        let now = 10 * HOUR;
        const specOf = (i: number, a: (typeof initial)[number]) => ({
          id: i,
          rules: a.rules,
          status: a.active ? ('active' as const) : ('paused' as const),
          start_ms: a.start,
          end_ms: a.start !== null && a.hours !== null ? a.start + a.hours * HOUR : a.hours !== null ? a.hours * HOUR : null,
          daily_budget_micros: a.budget,
          advertiser_id: `adv${a.advertiser}`,
        });
        const world = new World(initial.map((a, i) => specOf(i, a)));
        const refresh = () => {
          const ids: number[] = [];
          for (const i of world.ads.ids()) if (world.ads.servable(i, now)) ids.push(i);
          world.setServable(ids);
        };
        refresh();
        const write = (w: { kind: 'status' | 'spend' | 'tick' | 'upsert' | 'delete'; id?: number; active?: boolean; micros?: number; ms?: number; ad?: (typeof initial)[number] }) => {
          if (w.kind === 'status') world.ads.setActive(w.id!, w.active!);
          else if (w.kind === 'spend') world.ads.setSpend(w.id!, w.micros!, now);
          else if (w.kind === 'tick') now += w.ms!;
          else if (w.kind === 'upsert') {
            const spec = specOf(w.id!, w.ad!);
            world.ads.set(adRecord(spec));
            world.targeting.set(w.id!, spec.rules ?? undefined);
            world.rules.set(w.id!, spec.rules);
          } else if (world.ads.has(w.id!)) {
            world.ads.remove(w.id!);
            world.targeting.remove(w.id!);
            world.rules.delete(w.id!);
          }
          refresh();
        };
        // The definition, straight from the table: servable now, targeting holds, not excluded.
        const direct = (q: Pick<RetrieveQuery, 'attributes' | 'excludeAdIds' | 'excludeAdvertiserIds'>) => {
          const out = new Set<number>();
          for (const i of world.ads.ids()) {
            if (!world.ads.servable(i, now) || !evaluateTargeting(world.rules.get(i) ?? undefined, q.attributes)) continue;
            if (q.excludeAdIds.has(world.ads.adId(i)) || q.excludeAdvertiserIds.has(world.ads.advertiserId(i))) continue;
            out.add(i);
          }
          return out;
        };
        const { stage, run } = stageOf(world, { maxEntries });
        let targetingWrites = 0;
        let requests = 0;
        for (const o of ops) {
          if (o.kind !== 'request') {
            if (o.kind === 'upsert' || o.kind === 'delete') targetingWrites++;
            write(o);
            continue;
          }
          requests++;
          const q = { attributes: o.attributes, excludeAdIds: new Set(o.exclude.map((i) => `ad${i}`)), excludeAdvertiserIds: new Set(o.advertiser === null ? [] : [`adv${o.advertiser}`]) };
          const before = direct(q);
          const pending = run(q);
          if (o.during !== null) write(o.during);
          const r = await pending;
          // A hit answers at once (before the write), and so does the uncached path (it matches within the
          // servable array it starts with); a cache miss ANDs the servable ads when its match ends (after it).
          const note = r.ctx.notes.get('cache');
          const at = note === 'hit' || note === undefined ? before : direct(q);
          assertSet(r.e, at, 12, JSON.stringify(o));
          assert.ok(['hit', 'miss', 'shared', undefined].includes(r.ctx.notes.get('cache') as string | undefined));
          r.end();
        }
        // Each native match is a miss; with a cache, misses come only from new signatures or upserts and deletes.
        assert.equal(world.matches, stage.stats.misses + (maxEntries === 0 ? requests : 0));
        if (maxEntries === 1024) assert.ok(stage.stats.misses <= new Set(ops.filter((o) => o.kind === 'request').map((o) => attributeSignature((o as { attributes: RequestAttributes }).attributes))).size * (targetingWrites + 1));
      }),
      { numRuns: 300 },
    );
  });
});
