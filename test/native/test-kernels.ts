import { strict as assert } from 'node:assert';
import { andCount, availableSimdLevels, internals, simdLevel } from '../../src/native/index';
import { rng } from '../fixtures/vectors';

// Every kernel of every instruction set this CPU has, against the scalar kernel and against a
// float64 reference, for every dimension 1..300 at element offsets 0..3 (unaligned views).
describe('SIMD kernels', () => {
  const levels = availableSimdLevels();
  const random = rng(7);
  const buf = (n: number, offset: number) => {
    const whole = new Float32Array(n + offset);
    for (let i = 0; i < whole.length; i++) whole[i] = random() * 4 - 2;
    return whole.subarray(offset);
  };
  const reference = (name: 'dot' | 'l2sq' | 'cos', a: Float32Array, b: Float32Array) => {
    let ab = 0, aa = 0, bb = 0, dd = 0, scale = 0;
    for (let i = 0; i < a.length; i++) {
      ab += a[i] * b[i];
      aa += a[i] * a[i];
      bb += b[i] * b[i];
      dd += (a[i] - b[i]) ** 2;
      scale += Math.abs(a[i] * b[i]);
    }
    if (name === 'dot') return { want: ab, tol: 1e-5 * scale + 1e-6 };
    if (name === 'l2sq') return { want: dd, tol: 1e-5 * dd + 1e-6 };
    return { want: aa === 0 || bb === 0 ? 0 : ab / Math.sqrt(aa * bb), tol: 1e-5 };
  };

  it('when the module loads, then it reports a level it actually has', () => {
    assert.ok(levels.includes('scalar'));
    assert.ok(levels.includes(simdLevel()), `${simdLevel()} not in ${levels.join(',')}`);
    if (process.env.FUNNEL_SIMD && levels.includes(process.env.FUNNEL_SIMD as never)) {
      assert.equal(simdLevel(), process.env.FUNNEL_SIMD);
    }
  });

  for (const level of levels) {
    for (const name of ['dot', 'l2sq', 'cos'] as const) {
      it(`when ${level} ${name} runs on dims 1..300 at offsets 0..3, then it matches scalar and float64`, () => {
        for (let n = 1; n <= 300; n++) {
          for (let off = 0; off < 4; off++) {
            const a = buf(n, off);
            const b = buf(n, (off + 1) % 4);
            const got = internals.kernel(level, name, a, b);
            const scalar = internals.kernel('scalar', name, a, b);
            const { want, tol } = reference(name, a, b);
            assert.ok(Math.abs(got - want) <= tol, `${level} ${name} n=${n} off=${off}: ${got} vs ${want}`);
            assert.ok(Math.abs(got - scalar) <= 2 * tol, `${level} ${name} n=${n} off=${off}: ${got} vs scalar ${scalar}`);
          }
        }
      });
    }

    it(`when ${level} cos sees a zero vector, then it returns 0`, () => {
      const z = new Float32Array(37);
      assert.equal(internals.kernel(level, 'cos', z, buf(37, 0)), 0);
    });

    it(`when ${level} int8 dot runs on dims 1..300 at offsets 0..3 and at extremes, then it is exact`, () => {
      for (let n = 1; n <= 300; n++) {
        for (let off = 0; off < 4; off++) {
          const a = new Int8Array(n + off).subarray(off);
          const b = new Int8Array(n + 3 - off).subarray(3 - off);
          let want = 0;
          for (let i = 0; i < n; i++) {
            a[i] = Math.floor(random() * 256) - 128;
            b[i] = Math.floor(random() * 256) - 128;
            want += a[i] * b[i];
          }
          assert.equal(internals.kernelI8(level, a, b), want, `${level} i8 n=${n} off=${off}`);
        }
      }
      const n = 100000;
      const lo = new Int8Array(n).fill(-128);
      const hi = new Int8Array(n).fill(127);
      assert.equal(internals.kernelI8(level, lo, lo), 128 * 128 * n);
      assert.equal(internals.kernelI8(level, lo, hi), -128 * 127 * n);
    });

    for (const name of ['dot', 'l2sq'] as const) {
      it(`when ${level} ${name} rows kernel scores one query against many rows, then each row matches the single kernel`, () => {
        for (const dim of [1, 3, 7, 8, 9, 15, 16, 17, 31, 64, 100, 128, 129]) {
          for (const rows of [1, 3, 4, 5, 9]) {
            const q = buf(dim, 1);
            const block = buf(dim * rows, 2);
            const got = internals.kernelRows(level, name, q, block);
            assert.equal(got.length, rows);
            for (let r = 0; r < rows; r++) {
              const one = block.subarray(r * dim, (r + 1) * dim);
              const single = internals.kernel('scalar', name, q, one);
              const { tol } = reference(name, q, one);
              assert.ok(Math.abs(got[r] - single) <= 2 * tol + 1e-5, `${level} ${name} dim=${dim} row=${r}`);
            }
          }
        }
      });
    }
  }

  it('when a level the CPU lacks is asked for, then the error says so with a code', () => {
    const missing = (['avx2', 'avx512', 'neon'] as const).find((l) => !levels.includes(l));
    if (!missing) return;
    assert.throws(() => internals.kernel(missing, 'dot', new Float32Array(4), new Float32Array(4)), { code: 'ERR_INVALID_ARG' });
  });

  it('when andCount gets bitsets of any lengths, then out is their AND word by word (missing words 0, the rest of out zeroed) and the count its set bits', () => {
    const random = rng(11);
    const words = (n: number) => Uint32Array.from({ length: n }, () => (random() * 2 ** 32) >>> 0);
    const popcount = (x: number) => {
      let c = 0;
      for (; x !== 0; x &= x - 1) c++;
      return c;
    };
    for (const na of [0, 1, 2, 3, 31, 32, 33]) {
      for (const nb of [0, 1, 2, 3, 31, 32, 33]) {
        for (const nout of [0, 1, 5, 33, 40]) {
          const a = words(na);
          const b = words(nb);
          const out = words(nout);
          let want = 0;
          const expected = Array.from({ length: nout }, (_, i) => {
            const x = ((i < na ? a[i] : 0) & (i < nb ? b[i] : 0)) >>> 0;
            want += popcount(x);
            return x;
          });
          assert.equal(andCount(a, b, out), want, `na=${na} nb=${nb} nout=${nout}`);
          assert.deepEqual(Array.from(out), expected);
        }
      }
    }
    const a = words(40);
    const b = words(40);
    const want = Array.from(a, (x, i) => (x & b[i]) >>> 0);
    andCount(a, b, a);
    assert.deepEqual(Array.from(a), want, 'out may be a itself');
    const big = words(64);
    assert.throws(() => andCount(big.subarray(0, 40), b, big.subarray(20, 60)), { code: 'ERR_INVALID_ARG' });
    assert.throws(() => andCount(a, b, new Int32Array(4) as unknown as Uint32Array), { code: 'ERR_INVALID_ARG' });
  });
});
