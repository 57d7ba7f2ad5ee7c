import * as assert from 'node:assert/strict';
import { interleavedSweep, median, type SweepSubject } from '../../bench/lib/timing';

/** A subject whose searcher records each query it answers and returns [q + offset]. */
function fake(name: string, offset: number, log: string[]): SweepSubject {
  return {
    name,
    searcher: (ef) => ({
      run: (q: number) => {
        log.push(`${name}/${ef}/${q}`);
        return [q + offset];
      },
      ids: (answer: unknown) => answer as number[],
    }),
  };
}

describe('bench timing', () => {
  describe('interleavedSweep', () => {
    it('when run for three rounds, then the subjects are visited in order, reversed, then in order again, each at every ef', () => {
      const visits: string[] = [];
      const runs: string[] = [];
      const cells = interleavedSweep([fake('a', 0, runs), fake('b', 100, runs)], [16, 64], 2, 10, 1e-6, 3, (s, ef, r) =>
        visits.push(`${r}:${s}/${ef}`),
      );
      assert.deepEqual(visits, [
        '0:a/16', '0:a/64', '0:b/16', '0:b/64',
        '1:b/16', '1:b/64', '1:a/16', '1:a/64',
        '2:a/16', '2:a/64', '2:b/16', '2:b/64',
      ]);
      assert.equal(cells.length, 2);
      for (const row of cells) {
        assert.equal(row.length, 2);
        for (const cell of row) {
          assert.equal(cell.qps.length, 3);
          for (const x of cell.qps) assert.ok(x > 0 && Number.isFinite(x));
        }
      }
      // Answers come from the first (untimed) pass: one id per query, the rest of k left missing.
      assert.equal(cells[1][0].found.rows, 2);
      assert.equal(cells[1][0].found.cols, 10);
      assert.equal(cells[1][0].found.data[0], 100);
      assert.equal(cells[1][0].found.data[10], 101);
      assert.ok(runs.includes('b/64/1'));
    });
  });

  describe('median', () => {
    it('when the count is odd or even, then it is the middle value or the mean of the middle two', () => {
      assert.equal(median([5, 1, 3]), 3);
      assert.equal(median([4, 1, 3, 2]), 2.5);
      assert.equal(median([7]), 7);
    });

    it('when the list is empty, then it throws', () => {
      assert.throws(() => median([]), /empty/);
    });
  });
});
