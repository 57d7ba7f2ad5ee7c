import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { PriorOrder, priorOf } from '../../src/serving/prior-order';
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
});
