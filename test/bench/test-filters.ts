import * as assert from 'node:assert/strict';
import { SeededRandom } from '../../bench/lib/dataset';
import { hasBit, randomSubset, toBitset } from '../../bench/lib/filters';

describe('bench allowed-id sets', () => {
  it('when a subset is drawn, then it has round(n*f) distinct sorted ids in range, reproducibly', () => {
    const a = randomSubset(1000, 0.1, new SeededRandom(1));
    assert.equal(a.length, 100);
    for (let i = 1; i < a.length; i++) assert.ok(a[i - 1] < a[i]);
    assert.ok(a[a.length - 1] < 1000);
    assert.deepEqual(randomSubset(1000, 0.1, new SeededRandom(1)), a);
  });

  it('when the fraction rounds to zero ids, then one id is still allowed', () => {
    assert.equal(randomSubset(100, 0.001, new SeededRandom(1)).length, 1);
  });

  it('when ids become a bitset, then exactly those bits are set', () => {
    const ids = Uint32Array.from([0, 31, 32, 99]);
    const bits = toBitset(ids, 100);
    assert.equal(bits.length, 4);
    for (let i = 0; i < 100; i++) assert.equal(hasBit(bits, i), ids.includes(i));
    assert.throws(() => toBitset([100], 100), /outside \[0, 100\)/);
  });
});
