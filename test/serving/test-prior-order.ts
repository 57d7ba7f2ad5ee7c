import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { BID_ORDER, LOG_ZERO, PriorOrder, priorKey, priorOf, rankerKeyOf } from '../../src/serving/prior-order';
import { clampedLogit } from '../../src/stages/ranking/early-ranker';
import { adRecord, adTable } from '../fixtures/stage-context';

const E = { bid: 1, quality: 1, ctr_prior: 1 };

describe('PriorOrder', () => {
  it('when built, then ids come by prior descending, ties by id', () => {
    const ads = adTable([
      { id: 0, bid_micros: 100 },
      { id: 1, bid_micros: 300 },
      { id: 2, bid_micros: 300 },
      { id: 3, bid_micros: 200 },
    ]);
    const o = new PriorOrder();
    o.rebuild(ads);
    assert.deepEqual(o.get(E), [1, 2, 3, 0]);
    assert.deepEqual(o.get({ bid: 0, quality: 1, ctr_prior: 1 }), [0, 1, 2, 3]);
  });

  it('when ads change, are added or removed in any sequence, then the order equals a fresh sort', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ id: fc.integer({ min: 0, max: 40 }), bid: fc.integer({ min: 0, max: 5 }), del: fc.boolean() }), { maxLength: 120 }),
        (ops) => {
          const ads = adTable([]);
          const o = new PriorOrder();
          o.rebuild(ads);
          o.get(E);
          for (const op of ops) {
            if (op.del) {
              ads.remove(op.id);
              o.remove([op.id]);
            } else {
              ads.set(adRecord({ id: op.id, bid_micros: op.bid }));
              o.update(ads, [op.id]);
            }
          }
          const want = [...ads.ids()].sort((a, b) => priorOf(ads, b, E) - priorOf(ads, a, E) || a - b);
          assert.deepEqual(o.get(E), want);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('when ads change in any sequence, then the ranker-key order equals a fresh sort by log bid + w_ctr logit(ctr) + w_q quality, and withKeys gives each key', () => {
    const R = { kind: 'ranker' as const, w: { ctr_prior_logit: 0.7, quality: -1.5 } };
    fc.assert(
      fc.property(
        fc.array(
          fc.record({ id: fc.integer({ min: 0, max: 40 }), bid: fc.integer({ min: 0, max: 5 }), ctr: fc.double({ min: 0, max: 1, noNaN: true }), q: fc.double({ min: 0, max: 1, noNaN: true }), del: fc.boolean() }),
          { maxLength: 120 },
        ),
        (ops) => {
          const ads = adTable([]);
          const o = new PriorOrder();
          o.rebuild(ads);
          o.get(R);
          for (const op of ops) {
            if (op.del) {
              ads.remove(op.id);
              o.remove([op.id]);
            } else {
              ads.set(adRecord({ id: op.id, bid_micros: op.bid, ctr_prior: op.ctr, quality: op.q }));
              o.update(ads, [op.id]);
            }
          }
          const key = (id: number) => rankerKeyOf(ads, id, R.w);
          const want = [...ads.ids()].sort((a, b) => key(b) - key(a) || a - b);
          const { ids, keys } = o.withKeys(R);
          assert.deepEqual(ids, want);
          for (const id of ids) {
            assert.equal(keys[id], key(id));
            const bid = ads.bidMicros(id);
            const direct = bid > 0 ? Math.log(bid) + 0.7 * clampedLogit(ads.ctrPrior(id)) - 1.5 * ads.quality(id) : LOG_ZERO;
            assert.ok(Math.abs(keys[id] - direct) < 1e-9, `key of ${id}`);
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  it('when orders are retained, then only the named keys are kept and others are rebuilt on demand', () => {
    const ads = adTable([{ id: 0, bid_micros: 5 }, { id: 1, bid_micros: 9 }]);
    const o = new PriorOrder();
    o.rebuild(ads);
    assert.deepEqual(o.get(BID_ORDER), [1, 0]);
    o.retain([priorKey(E)]);
    assert.deepEqual(o.get(BID_ORDER), [1, 0]);
  });
});
