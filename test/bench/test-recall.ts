import * as assert from 'node:assert/strict';
import { MISSING_ID, recallAtK } from '../../bench/lib/recall';

describe('bench recallAtK', () => {
  it('when every true id is found in any order, then recall is 1', () => {
    const truth = { rows: 1, cols: 3, data: [1, 2, 3] };
    assert.equal(recallAtK({ rows: 1, cols: 3, data: [3, 1, 2] }, truth, 3), 1);
  });

  it('when half the ids are found, then recall is the mean of per-query fractions', () => {
    const truth = { rows: 2, cols: 2, data: [1, 2, 3, 4] };
    const found = { rows: 2, cols: 2, data: [1, 9, 8, 7] };
    assert.equal(recallAtK(found, truth, 2), 0.25);
  });

  it('when the truth has more columns than k, then only its first k ids count', () => {
    const truth = { rows: 1, cols: 4, data: [1, 2, 3, 4] };
    assert.equal(recallAtK({ rows: 1, cols: 2, data: [1, 3] }, truth, 2), 0.5);
  });

  it('when found ids past k match, then they do not count', () => {
    const truth = { rows: 1, cols: 2, data: [1, 2] };
    assert.equal(recallAtK({ rows: 1, cols: 3, data: [5, 6, 1] }, truth, 2), 0);
  });

  it('when the truth row has empty slots, then the denominator is its true ids only', () => {
    const truth = { rows: 2, cols: 3, data: [7, MISSING_ID, MISSING_ID, -1, -1, -1] };
    const found = { rows: 2, cols: 3, data: [7, MISSING_ID, MISSING_ID, 1, 2, 3] };
    assert.equal(recallAtK(found, truth, 3), 1);
  });

  it('when row counts differ or k exceeds the truth columns, then it throws', () => {
    const truth = { rows: 1, cols: 2, data: [1, 2] };
    assert.throws(() => recallAtK({ rows: 2, cols: 2, data: [1, 2, 3, 4] }, truth, 2), /2 found rows but 1 truth rows/);
    assert.throws(() => recallAtK({ rows: 1, cols: 2, data: [1, 2] }, truth, 3), /fewer than k=3/);
  });
});
