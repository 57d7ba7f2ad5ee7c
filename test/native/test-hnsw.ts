import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { HnswIndex, type HnswIndex as Hnsw, type Metric } from '../../src/native/index';
import {
  exactTopK, iota, randomSubset, randomVectors, recallOf, row, sift9k, toBits, type Vectors,
} from '../fixtures/vectors';

const K = 10;

function build(base: Vectors, metric: Metric, extra: Partial<{ quantization: 'none' | 'int8'; threads: number }> = {}): Hnsw {
  const ix = new HnswIndex({ dim: base.dim, metric, capacity: base.rows, quantization: extra.quantization });
  ix.addBatch(iota(base.rows), base.data, extra.threads ?? 2);
  return ix;
}

describe('HnswIndex on sift9k (real data)', function () {
  const { base, queries } = sift9k();
  const nq = 300; // queries used for recall; the held-out set has 1,000
  const q = { rows: nq, dim: queries.dim, data: queries.data.subarray(0, nq * queries.dim) };
  const indexes = new Map<string, Hnsw>();
  const exact = new Map<string, Uint32Array>();
  const get = (metric: Metric, quantization: 'none' | 'int8' = 'none') => {
    const key = `${metric}/${quantization}`;
    if (!indexes.has(key)) indexes.set(key, build(base, metric, { quantization }));
    if (!exact.has(metric)) exact.set(metric, exactTopK(base, q, K, metric));
    return { ix: indexes.get(key)!, truth: exact.get(metric)! };
  };

  for (const metric of ['l2', 'cos', 'ip'] as const) {
    it(`when searched with ${metric} at default settings, then recall@10 >= 0.95 against exact search`, () => {
      const { ix, truth } = get(metric);
      assert.equal(ix.size, base.rows);
      const recall = recallOf(truth, K, nq, (i) => ix.search(row(q, i), K).ids);
      assert.ok(recall >= 0.95, `recall ${recall}`);
    });
  }

  it('when built with int8 quantization, then recall@10 >= 0.95 after float re-ranking', () => {
    const { ix, truth } = get('l2', 'int8');
    assert.equal(ix.quantization, 'int8');
    const recall = recallOf(truth, K, nq, (i) => ix.search(row(q, i), K).ids);
    assert.ok(recall >= 0.95, `recall ${recall}`);
  });

  for (const fraction of [0.5, 0.1, 0.01, 0.001]) {
    // A forced graph walk is held to the recall target only where the planner would choose it
    // (at 9k ids, 1% is 90 ids: two-hop expansion cannot connect them; the planner scans).
    const graphRecall = fraction >= 0.1;
    it(`when ${fraction * 100}% of ids are allowed, then no disallowed id comes back and recall@10 >= 0.95`, () => {
      const { ix } = get('l2');
      const allowIds = randomSubset(base.rows, fraction, Math.round(fraction * 1e4));
      const allowBits = toBits(allowIds, base.rows);
      const allowed = new Set(allowIds);
      const truth = exactTopK(base, q, K, 'l2', allowIds);
      for (const plan of ['auto', 'graph', 'scan'] as const) {
        for (const filter of [{ allowIds }, { allowBits }]) {
          const recall = recallOf(truth, K, nq, (i) => {
            const r = ix.search(row(q, i), K, { ...filter, plan });
            assert.equal(r.ids.length, Math.min(K, allowIds.length));
            for (const id of r.ids) assert.ok(allowed.has(id), `disallowed id ${id} (plan ${plan})`);
            if (plan === 'scan') assert.equal(r.plan, 'scan');
            return r.ids;
          });
          if (plan !== 'graph' || graphRecall) {
            assert.ok(recall >= 0.95, `plan ${plan} ${'allowIds' in filter ? 'ids' : 'bits'}: recall ${recall}`);
          }
        }
      }
    });
  }

  // Without the widening this walk gave 0.92 (0.96 at 10%); with it 0.987-0.989 over repeated builds.
  it('when 5% of ids are allowed and ef is only k, then a graph walk still reaches recall@10 >= 0.97 (its beam widens as the allowed share falls)', () => {
    const { ix } = get('l2');
    const allowIds = randomSubset(base.rows, 0.05, 1000);
    const truth = exactTopK(base, q, K, 'l2', allowIds);
    const recall = recallOf(truth, K, nq, (i) => ix.search(row(q, i), K, { ef: K, allowIds, plan: 'graph' }).ids);
    assert.ok(recall >= 0.97, `recall ${recall}`);
  });

  it('when the allowed set is tiny, then the planner scans; when it is large, then it walks the graph', () => {
    const { ix } = get('l2');
    assert.equal(ix.search(row(q, 0), K, { allowIds: randomSubset(base.rows, 0.01, 3) }).plan, 'scan');
    assert.equal(ix.search(row(q, 0), K, { allowIds: randomSubset(base.rows, 0.6, 3) }).plan, 'graph');
  });
});

describe('HnswIndex behaviour', () => {
  const dim = 24;
  const n = 3000;
  const data = randomVectors(n, dim, 11);
  const base = { rows: n, dim, data };
  let tmp: string;
  before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'funnel-hnsw-'));
  });
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('when vectors are gathered by id, then each row equals getVector and absent ids give zeros', () => {
    for (const metric of ['ip', 'cos', 'l2'] as const) {
      const ix = new HnswIndex({ dim: 5, metric });
      const v = new Float32Array(20).map((_, i) => Math.sin(i + 1));
      ix.addBatch(Uint32Array.of(0, 1, 2, 3), v);
      ix.remove(2);
      const ids = Uint32Array.of(3, 2, 0, 99);
      const out = new Float32Array(ids.length * 5).fill(7);
      assert.equal(ix.gatherVectors(ids, out), 2);
      assert.deepEqual(Array.from(out.subarray(0, 5)), Array.from(ix.getVector(3)));
      assert.deepEqual(Array.from(out.subarray(10, 15)), Array.from(ix.getVector(0)));
      assert.deepEqual(Array.from(out.subarray(5, 10)), [0, 0, 0, 0, 0]);
      assert.deepEqual(Array.from(out.subarray(15, 20)), [0, 0, 0, 0, 0]);
      assert.throws(() => ix.gatherVectors(ids, new Float32Array(19)), { code: 'ERR_INVALID_ARG' });
    }
  });

  it('when ids are removed, then searches never return them, at any k and plan', () => {
    const ix = build(base, 'l2');
    const removed = randomSubset(n, 0.3, 5);
    for (const id of removed) ix.remove(id);
    const gone = new Set(removed);
    assert.equal(ix.size, n - removed.length);
    assert.equal(ix.has(removed[0]), false);
    for (let i = 0; i < 200; i++) {
      const query = randomVectors(1, dim, 1000 + i);
      for (const r of [ix.search(query, 50), ix.search(query, 5, { plan: 'scan' }), ix.search(query, 5, { allowIds: iota(n) })]) {
        for (const id of r.ids) assert.ok(!gone.has(id), `removed id ${id} returned`);
      }
    }
    // Even exact vectors of removed ids find other ids.
    for (const id of removed.subarray(0, 50)) {
      assert.ok(!ix.search(data.subarray(id * dim, (id + 1) * dim), 1).ids.includes(id));
    }
    assert.ok(ix.search(randomVectors(1, dim, 9), ix.size).ids.length === ix.size);
  });

  it('when a few allowed ids sit at word edges and in the last words of a bitset, then a scan returns exactly those', () => {
    // 3,000 ids = 94 words: eleven groups of eight (skipped whole when zero) and six tail words.
    const ix = build(base, 'l2');
    const allowIds = Uint32Array.of(0, 31, 32, 255, 256, 2815, 2816, 2999);
    const allowBits = toBits(allowIds, n);
    const query = randomVectors(1, dim, 4242);
    for (const filter of [{ allowIds }, { allowBits }]) {
      for (const plan of ['auto', 'scan'] as const) {
        const r = ix.search(query, allowIds.length, { ...filter, plan });
        assert.equal(r.plan, 'scan');
        assert.deepEqual([...r.ids].sort((a, b) => a - b), [...allowIds], `${plan} ${'allowIds' in filter ? 'ids' : 'bits'}`);
      }
    }
  });

  it('when an id is added again with a new vector, then it is found at its new place', () => {
    const ix = build(base, 'l2');
    const target = randomVectors(1, dim, 77).map((v) => v * 5);
    ix.add(42, target);
    const r = ix.search(target, 1);
    assert.equal(r.ids[0], 42);
    assert.deepEqual(Array.from(ix.getVector(42)), Array.from(target));
    ix.remove(42);
    ix.add(42, target);
    assert.equal(ix.has(42), true);
    assert.equal(ix.size, n);
  });

  for (const quantization of ['none', 'int8'] as const) {
    it(`when saved and loaded (${quantization}), then results are identical with and without mmap`, () => {
      const ix = build(base, 'cos', { quantization });
      ix.remove(7);
      const file = path.join(tmp, `ix-${quantization}.fidx`);
      ix.save(file, { tag: 12345 });
      for (const mmap of [false, true]) {
        const back = HnswIndex.load(file, { mmap });
        assert.equal(back.tag, 12345);
        assert.equal(back.size, ix.size);
        assert.equal(back.mapped, mmap);
        assert.equal(back.quantization, quantization);
        for (let i = 0; i < 100; i++) {
          const query = randomVectors(1, dim, 500 + i);
          const a = ix.search(query, K);
          const b = back.search(query, K);
          assert.deepEqual(Array.from(b.ids), Array.from(a.ids));
          assert.deepEqual(Array.from(b.scores), Array.from(a.scores));
        }
        // A loaded (even mapped) index takes writes; the file is untouched.
        back.add(n + 5, randomVectors(1, dim, 3));
        assert.equal(back.has(n + 5), true);
      }
      assert.equal(HnswIndex.load(file).has(n + 5), false);
    });
  }

  it('when saved on the thread pool while searches run, then the file loads to the same index and tag; a bad path rejects with ERR_IO', async () => {
    const ix = build(base, 'l2');
    const file = path.join(tmp, 'async.fidx');
    const query = randomVectors(1, dim, 77);
    const [, during] = await Promise.all([ix.saveAsync(file, { tag: 777 }), ix.searchAsync(query, K)]);
    assert.deepEqual(Array.from(during.ids), Array.from(ix.search(query, K).ids));
    const back = HnswIndex.load(file, { mmap: true });
    assert.equal(back.tag, 777);
    assert.equal(back.size, ix.size);
    for (let i = 0; i < 50; i++) {
      const q = randomVectors(1, dim, 900 + i);
      assert.deepEqual(Array.from(back.search(q, K).ids), Array.from(ix.search(q, K).ids));
    }
    await assert.rejects(ix.saveAsync(path.join(tmp, 'no-such-dir', 'x.fidx')), (e: NodeJS.ErrnoException) => e.code === 'ERR_IO');
    assert.throws(() => ix.saveAsync(42 as unknown as string), (e: NodeJS.ErrnoException) => e.code === 'ERR_INVALID_ARG');
  });

  it('when the file is truncated, corrupted, foreign, newer or missing, then load fails with a clear coded error', () => {
    const ix = build({ rows: 500, dim, data: data.subarray(0, 500 * dim) }, 'l2');
    const file = path.join(tmp, 'good.fidx');
    ix.save(file);
    const bytes = fs.readFileSync(file);
    const variant = (name: string, mutate: (b: Buffer) => Buffer) => {
      const p = path.join(tmp, name);
      fs.writeFileSync(p, mutate(Buffer.from(bytes)));
      return p;
    };
    const cases: Array<[string, RegExp]> = [
      [variant('trunc-header', (b) => b.subarray(0, 100)), /truncated/],
      [variant('trunc-body', (b) => b.subarray(0, b.length - 1000)), /truncated/],
      [variant('flipped', (b) => { b[b.length - 17] ^= 0x40; return b; }), /checksum/],
      [variant('header-flip', (b) => { b[30] ^= 1; return b; }), /checksum/],
      [variant('foreign', () => Buffer.from('{"not":"an index"}\n'.repeat(400))), /not a funnel index/],
      [variant('newer', (b) => { b.writeUInt32LE(99, 8); return b; }), /newer/],
      [variant('empty', () => Buffer.alloc(0)), /not a funnel index/],
    ];
    for (const [p, message] of cases) {
      assert.throws(() => HnswIndex.load(p), (e: NodeJS.ErrnoException) => {
        assert.equal(e.code, 'ERR_CORRUPT_INDEX', `${p}: ${e.message}`);
        assert.match(e.message, message);
        assert.ok(e.message.includes(p), 'names the file');
        return true;
      });
    }
    assert.throws(() => HnswIndex.load(path.join(tmp, 'nope.fidx')), { code: 'ERR_IO' });
    // Corrupt structure with checksums skipped is still refused, never a crash.
    const badLinks = variant('bad-links', (b) => { b.fill(0xff, 8192, 8192 + 4096); return b; });
    assert.throws(() => HnswIndex.load(badLinks, { verify: false }), { code: 'ERR_CORRUPT_INDEX' });
  });

  it('when searches run concurrently with inserts and removals, then every answer is valid', async () => {
    const ix = new HnswIndex({ dim, metric: 'l2', capacity: 16 });
    ix.addBatch(iota(500), data.subarray(0, 500 * dim));
    const more = iota(n - 500).map((i) => i + 500);
    const inserting = ix.addBatchAsync(more, data.subarray(500 * dim), 2);
    const searches: Promise<void>[] = [];
    for (let i = 0; i < 400; i++) {
      const query = randomVectors(1, dim, 9000 + i);
      searches.push(ix.searchAsync(query, K, { ef: 32 }).then((r) => {
        assert.equal(r.ids.length, K);
        assert.equal(new Set(r.ids).size, K, 'no duplicates');
        for (let j = 0; j < K; j++) {
          assert.ok(r.ids[j] < n);
          if (j > 0) assert.ok(r.scores[j] <= r.scores[j - 1], 'best first');
        }
      }));
      if (i % 50 === 0) ix.remove(i);
    }
    await Promise.all([inserting, ...searches]);
    assert.equal(ix.size, n - 8);
  });

  it('when given bad arguments, then each gets its coded error and nothing crashes', async () => {
    const ix = build({ rows: 100, dim, data: data.subarray(0, 100 * dim) }, 'l2');
    const good = randomVectors(1, dim, 1);
    const nan = good.slice();
    nan[3] = NaN;
    const inf = good.slice();
    inf[0] = Infinity;
    const cases: Array<[() => unknown, string]> = [
      [() => ix.search(new Float32Array(dim + 1), K), 'ERR_DIMENSION_MISMATCH'],
      [() => ix.search(nan, K), 'ERR_NON_FINITE'],
      [() => ix.search(inf, K), 'ERR_NON_FINITE'],
      [() => ix.search(good, 0), 'ERR_K_OUT_OF_RANGE'],
      [() => ix.search(good, 101), 'ERR_K_OUT_OF_RANGE'],
      [() => ix.search(Array.from(good) as unknown as Float32Array, K), 'ERR_INVALID_ARG'],
      [() => ix.search(good, K, { allowIds: Uint32Array.of(5, 3) }), 'ERR_INVALID_ARG'],
      [() => ix.search(good, K, { plan: 'fast' as never }), 'ERR_INVALID_ARG'],
      [() => ix.remove(100), 'ERR_UNKNOWN_ID'],
      [() => ix.getVector(1e6), 'ERR_UNKNOWN_ID'],
      [() => ix.add(-1, good), 'ERR_INVALID_ARG'],
      [() => ix.add(1, nan), 'ERR_NON_FINITE'],
      [() => ix.addBatch(Uint32Array.of(1, 2), good), 'ERR_DIMENSION_MISMATCH'],
      [() => ix.searchBatch(new Float32Array(dim * 2 + 1), K), 'ERR_DIMENSION_MISMATCH'],
      [() => new HnswIndex({ dim: 0, metric: 'l2' }), 'ERR_INVALID_ARG'],
      [() => new HnswIndex({ dim: 8, metric: 'hamming' as never }), 'ERR_INVALID_ARG'],
    ];
    for (const [call, code] of cases) assert.throws(call, { code }, `${call.toString()}`);
    await assert.rejects(ix.searchAsync(good, 101), { code: 'ERR_K_OUT_OF_RANGE' });
    await assert.rejects(ix.searchBatchAsync(nan, K), { code: 'ERR_NON_FINITE' });
    // A view at a byte offset is read from its own start.
    const padded = new Float32Array(dim + 3);
    padded.set(good, 3);
    assert.deepEqual(Array.from(ix.search(padded.subarray(3), K).ids), Array.from(ix.search(good, K).ids));
  });

  it('when a batch is searched (sync and async), then each row equals the single-query answer', async () => {
    const ix = build(base, 'ip');
    const qs = randomVectors(20, dim, 4);
    const sync = ix.searchBatch(qs, K);
    const asyncR = await ix.searchBatchAsync(qs, K);
    for (let i = 0; i < 20; i++) {
      const one = await ix.searchAsync(qs.subarray(i * dim, (i + 1) * dim), K);
      assert.deepEqual(Array.from(sync.ids.subarray(i * K, (i + 1) * K)), Array.from(one.ids));
      assert.deepEqual(Array.from(asyncR.ids.subarray(i * K, (i + 1) * K)), Array.from(one.ids));
    }
    const few = ix.searchBatch(qs, K, { allowIds: Uint32Array.of(1, 2, 3) });
    assert.equal(few.ids[3], 0xffffffff);
    assert.equal(few.scores[3], -Infinity);
  });
});
