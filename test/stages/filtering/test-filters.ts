import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import type { FiltersStageConfig } from '../../../src/config/schema';
import { SOURCE_BIT, type Candidate } from '../../../src/pipeline/types';
import { dayFractionAt, Filters, pacingAllows, scheduleAt, type PacingConfig } from '../../../src/stages/filtering/filters';
import { adRecord, adTable, cand, defaultPipeline, eligibleOf, makeContext, type AdSpec } from '../../fixtures/stage-context';

const DAY = 86_400_000;
const NOON = 20_000 * DAY + DAY / 2;

function pipelineWith(pacing: Partial<PacingConfig>) {
  const p = defaultPipeline();
  p.stages.Filters = { ...p.stages.Filters, pacing: { ...p.stages.Filters.pacing, ...pacing } };
  return p;
}

const ids = (cs: Candidate[]) => cs.map((c) => c.id);

describe('Filters', () => {
  describe('scheduleAt and pacingAllows', () => {
    it('when the curve is the default diagonal, then the schedule is the day fraction', () => {
      const curve: [number, number][] = [
        [0, 0],
        [1, 1],
      ];
      for (const x of [0, 0.25, 0.5, 0.999]) assert.equal(scheduleAt(curve, x), x);
    });

    it('when the curve has several points, then it is interpolated linearly and clamped to its ends', () => {
      const curve: [number, number][] = [
        [0, 0],
        [0.25, 0.5],
        [0.5, 0.5],
        [1, 1],
      ];
      assert.equal(scheduleAt(curve, 0.125), 0.25);
      assert.equal(scheduleAt(curve, 0.25), 0.5);
      assert.equal(scheduleAt(curve, 0.4), 0.5);
      assert.equal(scheduleAt(curve, 0.75), 0.75);
      assert.equal(scheduleAt(curve, 1), 1);
      assert.equal(scheduleAt(curve, -1), 0);
      assert.equal(scheduleAt(curve, 2), 1);
    });

    it('when spend runs ahead of schedule plus tolerance, then pacing throttles; at or below it, it allows', () => {
      const pacing: PacingConfig = { enabled: true, curve: [[0, 0], [1, 1]], tolerance: 0.1 };
      assert.equal(pacingAllows(600_000, 1_000_000, 0.5, pacing), true);
      assert.equal(pacingAllows(700_000, 1_000_000, 0.5, pacing), false);
      assert.equal(pacingAllows(50_000, 1_000_000, 0, pacing), true);
      assert.equal(pacingAllows(150_000, 1_000_000, 0, pacing), false);
    });

    it('when the budget is unlimited or zero, or pacing is off, then pacing always allows', () => {
      const pacing: PacingConfig = { enabled: true, curve: [[0, 0], [1, 1]], tolerance: 0 };
      assert.equal(pacingAllows(1e12, Infinity, 0, pacing), true);
      assert.equal(pacingAllows(1e12, 0, 0, pacing), true);
      assert.equal(pacingAllows(1e12, 1, 0, { ...pacing, enabled: false }), true);
    });

    it('when the time is before the epoch or at a day boundary, then the day fraction is in [0, 1)', () => {
      assert.equal(dayFractionAt(NOON), 0.5);
      assert.equal(dayFractionAt(20_000 * DAY), 0);
      assert.equal(dayFractionAt(-DAY / 4), 0.75);
    });
  });

  describe('run', () => {
    it('when candidates are paused, out of flight, over budget, unknown or not eligible, then they are dropped and counted', async () => {
      const ads = adTable(
        [
          { id: 0 },
          { id: 1, status: 'paused' },
          { id: 2, start_ms: NOON + 1 },
          { id: 3, end_ms: NOON },
          { id: 4, daily_budget_micros: 1000, spend_micros: 1000 },
          { id: 5 },
          { id: 6, start_ms: NOON, end_ms: NOON + 1 },
          { id: 7, daily_budget_micros: 1000, spend_micros: 999 },
        ],
        NOON,
      );
      const ctx = makeContext({ ads, nowMs: NOON, eligible: eligibleOf([0, 1, 2, 3, 4, 6, 7, 9]), pipeline: pipelineWith({ enabled: false }) });
      const out = await new Filters().run(ctx, [0, 1, 2, 3, 4, 5, 6, 7, 9, 1000, -1].map((id) => cand(id, SOURCE_BIT.Ann)));
      assert.deepEqual(ids(out), [0, 6, 7]);
      assert.equal((ctx.dropped.ineligible ?? 0), 8);
      assert.equal((ctx.dropped.paced ?? 0), 0);
    });

    it('when spend was reported on an earlier day, then it does not count today', async () => {
      const ads = adTable([{ id: 0, daily_budget_micros: 1000, spend_micros: 5000 }], NOON - DAY);
      const ctx = makeContext({ ads, nowMs: NOON });
      assert.deepEqual(ids(await new Filters().run(ctx, [cand(0, SOURCE_BIT.Ann)])), [0]);
    });

    it('when the request excludes an ad, an advertiser or a category, then those candidates are dropped', async () => {
      const ads = adTable([
        { id: 0, ad_id: 'x', advertiser_id: 'a', category: 'c' },
        { id: 1, ad_id: 'y', advertiser_id: 'b', category: 'c' },
        { id: 2, ad_id: 'z', advertiser_id: 'a', category: 'gaming' },
        { id: 3, ad_id: 'w', advertiser_id: 'e', category: 'finance' },
      ]);
      const run = async (query: Parameters<typeof makeContext>[0]['query']) =>
        ids(await new Filters().run(makeContext({ ads, query }), [0, 1, 2, 3].map((id) => cand(id, SOURCE_BIT.Targeting))));
      assert.deepEqual(await run({ excludeAdIds: new Set(['y', 'nope']) }), [0, 2, 3]);
      assert.deepEqual(await run({ excludeAdvertiserIds: new Set(['a']) }), [1, 3]);
      assert.deepEqual(await run({ blockedCategories: new Set(['gaming', 'finance']) }), [0, 1]);
    });

    it('when an id repeats, then the first is kept and the rest are counted as duplicates', async () => {
      const ads = adTable([{ id: 0 }, { id: 1 }]);
      const ctx = makeContext({ ads });
      const first = cand(1, SOURCE_BIT.Ann, { annScore: 0.5 });
      const out = await new Filters().run(ctx, [first, cand(0, 1), cand(1, 2), cand(0, 4)]);
      assert.deepEqual(ids(out), [1, 0]);
      assert.equal(out[0], first);
      assert.equal((ctx.dropped.duplicate ?? 0), 2);
    });

    it('when there is no eligible set, then nothing passes', async () => {
      const ads = adTable([{ id: 0 }]);
      const ctx = makeContext({ ads, eligible: null });
      assert.deepEqual(await new Filters().run(ctx, [cand(0, SOURCE_BIT.Ann)]), []);
      assert.equal((ctx.dropped.ineligible ?? 0), 1);
    });

    it('when the eligible bitset is shorter than the table, then ids past its end are dropped', async () => {
      const ads = adTable([{ id: 3 }, { id: 40 }]);
      const ctx = makeContext({ ads, eligible: { bits: new Uint32Array([0xffffffff]), count: 32, epoch: ads.epoch } });
      assert.deepEqual(ids(await new Filters().run(ctx, [cand(40, 1), cand(3, 1)])), [3]);
    });

    it('when an ad was set or removed after the eligible set was taken, then it is dropped (its bit may be stale)', async () => {
      const ads = adTable([{ id: 0 }, { id: 1 }, { id: 2 }]);
      const eligible = eligibleOf([0, 1, 2], 3, ads.epoch);
      ads.set(adRecord({ id: 1, ad_id: 'reused-by-another-ad' }));
      ads.setActive(2, true);
      const ctx = makeContext({ ads, eligible });
      assert.deepEqual(ids(await new Filters().run(ctx, [cand(0, 1), cand(1, 1), cand(2, 1)])), [0, 2]);
    });

    it('when pacing is on at noon, then ads spending ahead of schedule are throttled and unlimited ones are not', async () => {
      const ads = adTable(
        [
          { id: 0, daily_budget_micros: 1_000_000, spend_micros: 500_000 },
          { id: 1, daily_budget_micros: 1_000_000, spend_micros: 700_000 },
          { id: 2, spend_micros: 1e12 },
          { id: 3, daily_budget_micros: 1_000_000, spend_micros: 600_000 },
        ],
        NOON,
      );
      const ctx = makeContext({ ads, nowMs: NOON, pipeline: pipelineWith({ enabled: true, tolerance: 0.1 }) });
      const out = await new Filters().run(ctx, [0, 1, 2, 3].map((id) => cand(id, SOURCE_BIT.Ann)));
      assert.deepEqual(ids(out), [0, 2, 3]);
      assert.equal((ctx.dropped.paced ?? 0), 1);
      assert.equal((ctx.dropped.ineligible ?? 0), 0);
    });

    describe('property: the eligibility invariant holds for any sources', () => {
      const ADVERTISERS = ['a', 'b', 'c', 'd'];
      const CATEGORIES = ['gaming', 'finance', 'news'];
      const NOW = 20_000 * DAY + 37_000_000;
      const time = fc.option(fc.constantFrom(NOW - DAY, NOW - 1, NOW, NOW + 1, NOW + DAY), { nil: null, freq: 2 });
      const spec: fc.Arbitrary<AdSpec & { eligible: boolean; excluded: boolean }> = fc.record({
        id: fc.nat(70),
        advertiser_id: fc.constantFrom(...ADVERTISERS),
        category: fc.constantFrom(...CATEGORIES),
        status: fc.constantFrom('active' as const, 'active' as const, 'paused' as const),
        start_ms: time,
        end_ms: time,
        daily_budget_micros: fc.option(fc.constantFrom(0, 1000, 1_000_000), { nil: null, freq: 2 }),
        spend_micros: fc.option(fc.constantFrom(0, 500, 999, 1000, 400_000, 900_000, 2_000_000), { nil: undefined }),
        eligible: fc.boolean(),
        excluded: fc.integer({ min: 0, max: 5 }).map((x) => x === 0),
      });
      const world = fc.record({
        specs: fc.uniqueArray(spec, { selector: (s) => s.id, minLength: 20, maxLength: 50 }),
        // Bits set for ids no ad has: a stale eligible set.
        extraEligible: fc.array(fc.nat(95), { maxLength: 10 }),
        // 3 words cover every id generated; fewer cut the set short of the table.
        eligibleWords: fc.constantFrom(0, 1, 2, 3, 3, 3),
        noEligible: fc.integer({ min: 0, max: 9 }).map((x) => x === 0),
        excludeAdIds: fc.array(fc.oneof(fc.nat(70).map((i) => `ad${i}`), fc.constant('unknown')), { maxLength: 5 }),
        excludeAdvertiserIds: fc.subarray([...ADVERTISERS, 'zz'], { maxLength: 2 }),
        blockedCategories: fc.subarray([...CATEGORIES, 'zz'], { maxLength: 2 }),
        candidates: fc.array(
          fc.oneof(
            { weight: 8, arbitrary: fc.integer({ min: -2, max: 75 }) },
            { weight: 1, arbitrary: fc.constantFrom(NaN, 1.5, 2 ** 31, 2 ** 32 + 1, -0) },
          ),
          { minLength: 60, maxLength: 200 },
        ),
      });

      type World = typeof world extends fc.Arbitrary<infer T> ? T : never;

      function build(w: World, filters: FiltersStageConfig['pacing']) {
        const ads = adTable(w.specs, NOW);
        const excludeAdIds = [...w.excludeAdIds, ...w.specs.filter((s) => s.excluded).map((s) => `ad${s.id}`)];
        const words = w.eligibleWords;
        const eligible = w.noEligible ? null : eligibleOf([]);
        if (eligible) {
          eligible.bits = new Uint32Array(words);
          const set = (id: number) => {
            if (id < words * 32) eligible.bits[id >>> 5] |= 1 << (id & 31);
          };
          for (const s of w.specs) if (s.eligible) set(s.id);
          for (const id of w.extraEligible) set(id);
        }
        const p = defaultPipeline();
        p.stages.Filters = { ...p.stages.Filters, pacing: filters };
        const ctx = makeContext({
          ads,
          nowMs: NOW,
          eligible,
          pipeline: p,
          query: {
            excludeAdIds: new Set(excludeAdIds),
            excludeAdvertiserIds: new Set(w.excludeAdvertiserIds),
            blockedCategories: new Set(w.blockedCategories),
          },
        });
        // The oracle reads the generated records, not the AdTable, so it checks the table too.
        const byId = new Map(w.specs.map((s) => [s.id, s]));
        const allowed = (id: number): boolean => {
          const s = byId.get(id);
          if (!s || !Number.isInteger(id) || eligible === null) return false;
          if (id >= eligible.bits.length * 32 || ((eligible.bits[id >>> 5] >>> (id & 31)) & 1) === 0) return false;
          if (s.status !== 'active') return false;
          if (s.start_ms != null && NOW < s.start_ms) return false;
          if (s.end_ms != null && NOW >= s.end_ms) return false;
          if (s.daily_budget_micros != null && !((s.spend_micros ?? 0) < s.daily_budget_micros)) return false;
          if (excludeAdIds.includes(`ad${id}`)) return false;
          if (w.excludeAdvertiserIds.includes(s.advertiser_id!)) return false;
          if (w.blockedCategories.includes(s.category!)) return false;
          return true;
        };
        const input = w.candidates.map((id, i) => cand(id, 1 << (i % 3), { sourceRank: i }));
        return { ctx, allowed, input, byId };
      }

      it('when pacing is off, then every output satisfies every rule and every allowed input is kept exactly once, in input order', async () => {
        let nonEmpty = 0;
        await fc.assert(
          fc.asyncProperty(world, async (w) => {
            const { ctx, allowed, input } = build(w, { enabled: false, curve: [[0, 0], [1, 1]], tolerance: 0 });
            const out = await new Filters().run(ctx, input);
            for (const c of out) assert.ok(allowed(c.id), `id ${c.id} is not allowed`);
            assert.equal(new Set(ids(out)).size, out.length, 'no duplicates');
            const want: Candidate[] = [];
            const seen = new Set<number>();
            for (const c of input) {
              if (!allowed(c.id) || seen.has(c.id)) continue;
              seen.add(c.id);
              want.push(c);
            }
            assert.deepEqual(out, want);
            if (out.length > 0) nonEmpty++;
            for (let i = 0; i < out.length; i++) assert.equal(out[i], want[i], 'the input objects are passed through');
            const n = (k: string) => ctx.dropped[k] ?? 0;
            assert.equal(n('ineligible') + n('duplicate') + n('paced') + out.length, input.length);
          }),
          { numRuns: 400 },
        );
        assert.ok(nonEmpty > 100, `only ${nonEmpty} runs kept anything: the generator is too strict to test much`);
      });

      it('when pacing is on, then the output is the pacing-off output less exactly the ads pacingAllows refuses', async () => {
        const pacing: PacingConfig = {
          enabled: true,
          curve: [
            [0, 0],
            [0.3, 0.2],
            [1, 1],
          ],
          tolerance: 0.05,
        };
        let throttled = 0;
        await fc.assert(
          fc.asyncProperty(world, async (w) => {
            const off = build(w, { ...pacing, enabled: false });
            const on = build(w, pacing);
            const all = await new Filters().run(off.ctx, off.input);
            const paced = await new Filters().run(on.ctx, on.input);
            const ads = on.ctx.state.ads;
            const df = dayFractionAt(NOW);
            const want = all.filter((c) => pacingAllows(ads.spendToday(c.id, NOW), ads.budgetMicros(c.id), df, pacing));
            assert.deepEqual(ids(paced), ids(want));
            assert.equal((on.ctx.dropped.paced ?? 0), all.length - paced.length);
            if (paced.length < all.length) throttled++;
          }),
          { numRuns: 300 },
        );
        assert.ok(throttled > 10, `pacing throttled in only ${throttled} runs: the generator is too lenient to test much`);
      });
    });
  });
});
