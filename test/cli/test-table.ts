import * as assert from 'node:assert/strict';
import { fixed, formatTable, grouped, mebibytes } from '../../src/cli/table';

describe('table printing', () => {
  it('when rows are printed, then columns line up left or right as asked', () => {
    const text = formatTable('T', [{ header: 'name', align: 'left' }, { header: 'qps' }], [
      ['a', '1,000'],
      ['longer', '5'],
    ]);
    assert.equal(text, ['T', 'name      qps', '------  -----', 'a       1,000', 'longer      5'].join('\n'));
  });

  it('when a row has the wrong number of cells, then it throws', () => {
    assert.throws(() => formatTable('T', [{ header: 'a' }], [['1', '2']]), /row 0 has 2 cells, expected 1/);
  });

  it('when numbers are formatted, then missing values print as a dash', () => {
    assert.equal(fixed(0.12345, 3), '0.123');
    assert.equal(fixed(undefined, 3), '-');
    assert.equal(grouped(1234567.6), '1,234,568');
    assert.equal(mebibytes(3 * 1024 * 1024), '3.0');
    assert.equal(mebibytes(Number.NaN), '-');
  });
});
