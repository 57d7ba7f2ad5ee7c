import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import { SOURCE_BIT, type Candidate } from '../../src/pipeline/types';
import { Merge } from '../../src/stages/merge';
import { adTable, cand, makeContext } from '../fixtures/stage-context';

const { Ann, Targeting, Popularity } = SOURCE_BIT;

describe('Merge', () => {
  const ctx = () => makeContext({ ads: adTable([]) });

  it('when one id comes from several sources, then it appears once with every source bit, its similarity and its best rank', async () => {
    const out = await new Merge().run(ctx(), [
      [cand(1, Ann, { annScore: 0.9, sourceRank: 0 }), cand(2, Ann, { annScore: 0.5, sourceRank: 1 })],
      [cand(3, Targeting, { sourceRank: 0 }), cand(2, Targeting, { sourceRank: 1 }), cand(1, Targeting, { sourceRank: 2 })],
      [cand(2, Popularity, { sourceRank: 0 })],
    ]);
    assert.deepEqual(
      out.map((c) => c.id),
      [1, 3, 2],
    );
    const two = out.find((c) => c.id === 2)!;
    assert.equal(two.sources, Ann | Targeting | Popularity);
    assert.equal(two.annScore, 0.5);
    assert.equal(two.sourceRank, 0);
    assert.ok(Number.isNaN(two.score));
    const one = out.find((c) => c.id === 1)!;
    assert.equal(one.sources, Ann | Targeting);
    assert.equal(one.annScore, 0.9);
  });

  it('when the similarity comes from a later list, then the merged candidate carries it', async () => {
    const out = await new Merge().run(ctx(), [[cand(7, Targeting, { sourceRank: 0 })], [cand(7, Ann, { annScore: 0.25, sourceRank: 3 })]]);
    assert.equal(out.length, 1);
    assert.equal(out[0].annScore, 0.25);
    assert.equal(out[0].sourceRank, 0);
  });

  it('when ranks tie, then the order the lists were given decides, and within a list its order', async () => {
    const out = await new Merge().run(ctx(), [
      [cand(10, Ann, { sourceRank: 0 }), cand(11, Ann, { sourceRank: 1 }), cand(12, Ann, { sourceRank: 2 })],
      [cand(20, Targeting, { sourceRank: 0 }), cand(21, Targeting, { sourceRank: 1 })],
      [cand(30, Popularity, { sourceRank: 0 }), cand(31, Popularity, { sourceRank: 0 })],
    ]);
    assert.deepEqual(
      out.map((c) => c.id),
      [10, 20, 30, 31, 11, 21, 12],
    );
  });

  it('when a later list gives a better rank, then the tie-break uses that list', async () => {
    // 5 is rank 3 in list 0 but rank 0 in list 2: it ties with 1 (list 0) and 9 (list 1) at rank 0 and comes after both.
    const out = await new Merge().run(ctx(), [
      [cand(1, Ann, { sourceRank: 0 }), cand(5, Ann, { sourceRank: 3 })],
      [cand(9, Targeting, { sourceRank: 0 })],
      [cand(5, Popularity, { sourceRank: 0 })],
    ]);
    assert.deepEqual(
      out.map((c) => c.id),
      [1, 9, 5],
    );
  });

  it('when the inputs are merged, then they are not modified and the duplicate count is noted', async () => {
    const a = cand(1, Ann, { annScore: 0.1, sourceRank: 4 });
    const c = ctx();
    const out = await new Merge().run(c, [[a], [cand(1, Targeting, { sourceRank: 0 })], []]);
    assert.notEqual(out[0], a);
    assert.deepEqual({ ...a }, { ...cand(1, Ann, { annScore: 0.1, sourceRank: 4 }) });
    assert.equal(c.notes.get('duplicates'), 1);
  });

  it('when there are no lists or only empty ones, then the answer is empty', async () => {
    assert.deepEqual(await new Merge().run(ctx(), []), []);
    assert.deepEqual(await new Merge().run(ctx(), [[], []]), []);
  });

  it('when lists are random (integer, fractional or huge ranks, repeats), then the answer matches the definition', async () => {
    const rank = fc.oneof(
      { weight: 6, arbitrary: fc.nat(30) },
      { weight: 1, arbitrary: fc.constantFrom(0.5, 2.25, 2 ** 30, 1e15, Infinity) },
    );
    const list = fc.array(fc.tuple(fc.nat(40), rank, fc.option(fc.double({ min: -1, max: 1, noNaN: true }), { nil: undefined })), { maxLength: 40 });
    await fc.assert(
      fc.asyncProperty(fc.array(list, { maxLength: 5 }), async (raw) => {
        const lists: Candidate[][] = raw.map((l, li) =>
          l.map(([id, sourceRank, ann]) => cand(id, 1 << (li % 3), { sourceRank, annScore: ann === undefined ? NaN : ann })),
        );
        // The definition, computed the slow way.
        const want = new Map<number, { sources: number; ann: number; rank: number; list: number; seen: number }>();
        lists.forEach((l, li) =>
          l.forEach((c) => {
            const w = want.get(c.id);
            if (!w) {
              want.set(c.id, { sources: c.sources, ann: c.annScore, rank: c.sourceRank, list: li, seen: want.size });
              return;
            }
            w.sources |= c.sources;
            if (!Number.isNaN(c.annScore)) w.ann = Number.isNaN(w.ann) ? c.annScore : Math.max(w.ann, c.annScore);
            if (c.sourceRank < w.rank) Object.assign(w, { rank: c.sourceRank, list: li });
          }),
        );
        const order = [...want.entries()].sort(([, a], [, b]) => (a.rank !== b.rank ? (a.rank < b.rank ? -1 : 1) : a.list - b.list || a.seen - b.seen));
        const out = await new Merge().run(ctx(), lists);
        assert.deepEqual(
          out.map((c) => c.id),
          order.map(([id]) => id),
        );
        for (const c of out) {
          const w = want.get(c.id)!;
          assert.equal(c.sources, w.sources);
          assert.equal(c.sourceRank, w.rank);
          assert.ok(c.annScore === w.ann || (Number.isNaN(c.annScore) && Number.isNaN(w.ann)));
        }
      }),
      { numRuns: 500 },
    );
  });
});
