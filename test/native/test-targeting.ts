import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import {
  TargetingIndex,
  type Conjunction,
  type Predicate,
  type RequestAttributes,
  type Targeting,
  type TargetingIndex as Index,
} from '../../src/native/index';
import { evaluateTargeting } from '../../src/store/targeting-eval';
import { generateCatalog, generateRequests } from '../../src/catalog/generate';

type Model = Map<number, Targeting | undefined>;

function bit(bits: Uint32Array, i: number): boolean {
  return ((bits[i >>> 5] >>> (i & 31)) & 1) === 1;
}

/** Every id of the index's answer space: the bit is set exactly when the model says the ad matches (and `within` allows it). */
function assertMatchesModel(ix: Index, model: Model, attrs: RequestAttributes, within?: Uint32Array): void {
  const { bits, count } = ix.match(attrs, within === undefined ? undefined : { within });
  assert.equal(bits.length, Math.ceil(ix.capacity / 32));
  const expected: number[] = [];
  for (const [id, t] of model) {
    const allowed = within === undefined || bit(within, id);
    if (allowed && evaluateTargeting(t, attrs)) expected.push(id);
  }
  expected.sort((a, b) => a - b);
  const got: number[] = [];
  for (let i = 0; i < bits.length * 32; i++) if (bit(bits, i)) got.push(i);
  assert.deepEqual(got, expected, `request ${JSON.stringify(attrs)}`);
  assert.equal(count, expected.length);
  assert.deepEqual(Array.from(ix.matchIds(attrs, within === undefined ? undefined : { within })), expected);
}

// Small vocabularies so that random ads and requests overlap; names include ones that collide
// with Object.prototype, values include the empty string, NUL, combining marks and astral
// code points.
const ATTRS = ['country', 'platform', 'community', 'ü', '', '__proto__', 'constructor'];
const VALUES = ['US', 'GB', '', 'ü', 'u\u0308', '日本', '🙂', 'r/nsfw', 'a b', '\u0000', 'us'];
const value = fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...VALUES) }, { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 3 }) });
const values = fc.array(value, { maxLength: 4 });
const predicate: fc.Arbitrary<Predicate> = fc.oneof(
  values.map((any_of) => ({ any_of })),
  values.map((none_of) => ({ none_of })),
  fc.tuple(values, values).map(([any_of, none_of]) => ({ any_of, none_of })),
);
const conjunction: fc.Arbitrary<Conjunction> = fc
  .uniqueArray(fc.tuple(fc.constantFrom(...ATTRS), predicate), { selector: ([name]) => name, maxLength: 3 })
  .map((entries) => Object.fromEntries(entries) as Conjunction);
const targeting: fc.Arbitrary<Targeting | undefined> = fc.option(fc.array(conjunction, { minLength: 1, maxLength: 3 }), {
  nil: undefined,
  freq: 6,
});
const request: fc.Arbitrary<RequestAttributes> = fc
  .uniqueArray(fc.tuple(fc.constantFrom(...ATTRS), values), { selector: ([name]) => name, maxLength: 5 })
  .map((entries) => Object.fromEntries(entries) as RequestAttributes);
const adId = fc.oneof(fc.nat(150), fc.integer({ min: 65_530, max: 65_545 }), fc.integer({ min: 200_000, max: 200_010 }));

function toBitset(ids: readonly number[], words: number): Uint32Array {
  const out = new Uint32Array(words);
  for (const id of ids) if (id >>> 5 < words) out[id >>> 5] |= 1 << (id & 31);
  return out;
}

describe('TargetingIndex against the direct evaluator (property)', function () {
  it('when random small catalogs meet random requests, then match() equals evaluateTargeting ad by ad', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(adId, targeting), { maxLength: 40 }), fc.array(request, { minLength: 1, maxLength: 8 }), (ads, requests) => {
        const ix = new TargetingIndex();
        const model: Model = new Map();
        for (const [id, t] of ads) {
          ix.set(id, t);
          model.set(id, t);
        }
        assert.equal(ix.size, model.size);
        for (const attrs of requests) assertMatchesModel(ix, model, attrs);
      }),
      { numRuns: 300 },
    );
  });

  it('when sets, replacements and removals interleave with requests, then every answer equals the evaluator', () => {
    type Op = { kind: 'set'; id: number; t: Targeting | undefined } | { kind: 'remove'; id: number } | { kind: 'match'; attrs: RequestAttributes };
    const op: fc.Arbitrary<Op> = fc.oneof(
      { weight: 5, arbitrary: fc.tuple(adId, targeting).map(([id, t]) => ({ kind: 'set' as const, id, t })) },
      { weight: 2, arbitrary: adId.map((id) => ({ kind: 'remove' as const, id })) },
      { weight: 2, arbitrary: request.map((attrs) => ({ kind: 'match' as const, attrs })) },
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 80 }), fc.array(request, { minLength: 1, maxLength: 3 }), (ops, finals) => {
        const ix = new TargetingIndex();
        const model: Model = new Map();
        for (const o of ops) {
          if (o.kind === 'set') {
            ix.set(o.id, o.t);
            model.set(o.id, o.t);
          } else if (o.kind === 'remove') {
            if (model.has(o.id)) {
              ix.remove(o.id);
              model.delete(o.id);
            } else {
              assert.throws(() => ix.remove(o.id), { code: 'ERR_UNKNOWN_ID' });
            }
          } else {
            assertMatchesModel(ix, model, o.attrs);
          }
          assert.equal(ix.size, model.size);
        }
        for (const id of model.keys()) assert.ok(ix.has(id));
        for (const attrs of finals) assertMatchesModel(ix, model, attrs);
      }),
      { numRuns: 200 },
    );
  });

  it('when a within mask is given, then the answer is the evaluator AND the mask (ids past its end excluded)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(adId, targeting), { minLength: 1, maxLength: 40 }),
        request,
        fc.array(adId, { maxLength: 60 }),
        fc.nat(6300),
        (ads, attrs, allowed, words) => {
          const ix = new TargetingIndex();
          const model: Model = new Map();
          for (const [id, t] of ads) {
            ix.set(id, t);
            model.set(id, t);
          }
          // Allow every ad half the time, so multi-conjunction ads reached through the extra space are covered.
          const ids = allowed.length % 2 === 0 ? [...allowed, ...model.keys()] : allowed;
          assertMatchesModel(ix, model, attrs, toBitset(ids, words));
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe('TargetingIndex at scale against the direct evaluator', function () {
  it('when 30,000 generated ads span chunks and dense sets, and a third are replaced or removed, then 150 requests match exactly', () => {
    const ix = new TargetingIndex();
    const model: Model = new Map();
    // Ids spread over four 65,536-id chunks, leaving the second one sparse.
    const idOf = (i: number): number => (i < 20_000 ? i : 140_000 + i);
    let i = 0;
    for (const row of generateCatalog({ count: 30_000, dim: 1, seed: 7 })) {
      ix.set(idOf(i), row.targeting);
      model.set(idOf(i), row.targeting);
      i++;
    }
    const requests = generateRequests(150, 9);
    for (const attrs of requests.slice(0, 50)) assertMatchesModel(ix, model, attrs);
    // Replace every third ad with another row's targeting, remove every fifth: dense postings
    // shrink back toward arrays, slots of the extra space are freed and reused.
    const others = [...generateCatalog({ count: 30_000, dim: 1, seed: 8 })];
    for (let j = 0; j < 30_000; j++) {
      const id = idOf(j);
      if (j % 5 === 0) {
        ix.remove(id);
        model.delete(id);
      } else if (j % 3 === 0) {
        ix.set(id, others[j].targeting);
        model.set(id, others[j].targeting);
      }
    }
    assert.equal(ix.size, model.size);
    for (const attrs of requests.slice(50)) assertMatchesModel(ix, model, attrs);
  });

  it('when one value is listed by 10,000 ads of a chunk and most are removed again, then answers stay exact through the bitmap/array conversions', () => {
    const ix = new TargetingIndex();
    const model: Model = new Map();
    const us: Targeting = [{ country: { any_of: ['US'] } }];
    const notUs: Targeting = [{ country: { none_of: ['US'] } }];
    for (let id = 0; id < 10_000; id++) {
      const t = id % 2 === 0 ? us : notUs;
      ix.set(id, t);
      model.set(id, t);
    }
    const check = (): void => {
      for (const attrs of [{ country: ['US'] }, { country: ['GB'] }, {}, { country: [] }]) assertMatchesModel(ix, model, attrs);
    };
    check();
    for (let id = 0; id < 10_000; id++) {
      if (id % 10 !== 0) {
        ix.remove(id);
        model.delete(id);
      }
    }
    check();
    for (let id = 0; id < 10_000; id += 3) {
      ix.set(id, us);
      model.set(id, us);
    }
    check();
  });
});

describe('TargetingIndex rules', function () {
  const ix = new TargetingIndex();
  const ads: Array<[number, Targeting | undefined | null]> = [
    [0, undefined],
    [1, [{ country: { any_of: ['US', 'CA'] } }]],
    [2, [{ country: { none_of: ['US'] } }]],
    [3, [{}]],
    [4, [{ country: { any_of: ['US'] }, platform: { any_of: ['ios'] } }]],
    [5, [{ country: { any_of: ['GB'] } }, { platform: { any_of: ['web'] } }]],
    [6, [{ country: { any_of: ['US'], none_of: ['US'] } }]],
    [7, [{ country: { any_of: [] } }]],
    [8, [{ country: { none_of: [] } }]],
    [9, [{ community: { any_of: ['r/日本', 'r/Zürich'] } }]],
    [10, null],
  ];
  for (const [id, t] of ads) ix.set(id, t);
  const ids = (attrs: RequestAttributes): number[] => Array.from(ix.matchIds(attrs));

  it('when targeting is absent, null or [{}], then the ad matches every request', () => {
    for (const attrs of [{}, { country: ['US'] }, { country: [] }, { x: ['y'] }]) {
      const got = ids(attrs);
      for (const id of [0, 3, 10]) assert.ok(got.includes(id), `ad ${id} for ${JSON.stringify(attrs)}`);
    }
  });

  it('when any_of lists one of the request values, then it holds; when the request lacks the attribute or has [], then it fails', () => {
    assert.ok(ids({ country: ['CA'] }).includes(1));
    assert.ok(ids({ country: ['FR', 'US'] }).includes(1));
    assert.ok(!ids({ country: ['FR'] }).includes(1));
    assert.ok(!ids({}).includes(1));
    assert.ok(!ids({ country: [] }).includes(1));
  });

  it('when none_of lists a request value, then it fails; when the request lacks the attribute or has [], then it holds', () => {
    assert.ok(!ids({ country: ['US'] }).includes(2));
    assert.ok(!ids({ country: ['FR', 'US'] }).includes(2));
    assert.ok(ids({ country: ['FR'] }).includes(2));
    assert.ok(ids({}).includes(2));
    assert.ok(ids({ country: [] }).includes(2));
  });

  it('when a conjunction has several predicates, then all must hold', () => {
    assert.ok(ids({ country: ['US'], platform: ['ios'] }).includes(4));
    assert.ok(!ids({ country: ['US'], platform: ['web'] }).includes(4));
    assert.ok(!ids({ country: ['US'] }).includes(4));
  });

  it('when an ad has several conjunctions, then any one holding suffices', () => {
    assert.ok(ids({ country: ['GB'] }).includes(5));
    assert.ok(ids({ platform: ['web'] }).includes(5));
    assert.ok(!ids({ country: ['US'], platform: ['ios'] }).includes(5));
  });

  it('when one predicate has both lists, then both must hold; an empty any_of never holds; an empty none_of always holds', () => {
    for (const attrs of [{}, { country: ['US'] }, { country: ['GB'] }]) {
      const got = ids(attrs);
      assert.ok(!got.includes(6));
      assert.ok(!got.includes(7));
      assert.ok(got.includes(8));
    }
  });

  it('when values are non-ASCII, then they compare exactly (no case or normalisation folding)', () => {
    assert.ok(ids({ community: ['r/日本'] }).includes(9));
    assert.ok(ids({ community: ['r/Zürich'] }).includes(9));
    assert.ok(!ids({ community: ['r/Zu\u0308rich'] }).includes(9));
    assert.ok(!ids({ community: ['R/日本'] }).includes(9));
  });

  it('when request values repeat or are unknown, or attributes are unknown or undefined, then the answer is unchanged', () => {
    assert.deepEqual(ids({ country: ['US', 'US'] }), ids({ country: ['US'] }));
    assert.deepEqual(ids({ country: ['US', 'nowhere'] }), ids({ country: ['US'] }));
    assert.deepEqual(ids({ country: ['US'], language: ['en'] }), ids({ country: ['US'] }));
    assert.deepEqual(ids({ country: ['US'], platform: undefined }), ids({ country: ['US'] }));
  });

  it('when an ad is replaced, then only its new targeting counts; when removed, then it never matches', () => {
    const t = new TargetingIndex();
    t.set(3, [{ country: { any_of: ['US'] } }, { platform: { any_of: ['ios'] } }]);
    assert.deepEqual(Array.from(t.matchIds({ platform: ['ios'] })), [3]);
    t.set(3, [{ country: { any_of: ['GB'] } }]);
    assert.deepEqual(Array.from(t.matchIds({ platform: ['ios'] })), []);
    assert.deepEqual(Array.from(t.matchIds({ country: ['GB'] })), [3]);
    assert.equal(t.size, 1);
    t.remove(3);
    assert.equal(t.size, 0);
    assert.equal(t.has(3), false);
    assert.deepEqual(Array.from(t.matchIds({ country: ['GB'] })), []);
    assert.equal(t.capacity, 4);
    assert.equal(t.match({}).bits.length, 1);
  });

  it('when matchAsync is awaited, then it equals match for the same request and options', async () => {
    const within = new Uint32Array([0b1011_0110_1011]);
    for (const attrs of [{}, { country: ['US'] }, { country: ['GB'], platform: ['web'] }, { community: ['r/日本'] }]) {
      for (const options of [undefined, { within }]) {
        const sync = ix.match(attrs, options);
        const got = await ix.matchAsync(attrs, options);
        assert.deepEqual(got.bits, sync.bits);
        assert.equal(got.count, sync.count);
      }
    }
    const out = new Uint32Array(4).fill(0xffffffff);
    const r = await ix.matchAsync({ country: ['US'] }, { out });
    assert.equal(r.bits, out);
    assert.deepEqual(Array.from(out), [ix.match({ country: ['US'] }).bits[0], 0, 0, 0]);
  });

  it('when ads are set while async matches are in flight, then every promise settles with a self-consistent answer', async () => {
    const t = new TargetingIndex();
    const us: Targeting = [{ country: { any_of: ['US'] } }];
    for (let id = 0; id < 50_000; id++) t.set(id, us);
    const pending: Array<Promise<{ bits: Uint32Array; count: number }>> = [];
    for (let round = 0; round < 20; round++) {
      pending.push(t.matchAsync({ country: ['US'] }));
      for (let id = round * 100; id < round * 100 + 100; id++) t.set(id, [{ country: { any_of: ['GB'] } }]);
      t.set(50_000 + round * 1000, us); // grows the answer while workers may be reading
    }
    const final = t.match({ country: ['US'] });
    for (const r of await Promise.all(pending)) {
      let popcount = 0;
      for (let i = 0; i < r.bits.length * 32; i++) {
        if (!bit(r.bits, i)) continue;
        popcount++;
        assert.ok(i < 50_000 || (i - 50_000) % 1000 === 0, `id ${i}`);
      }
      assert.equal(popcount, r.count);
      assert.ok(r.count >= final.count && r.count <= 50_000, `count ${r.count}`);
    }
  });

  it('when an out buffer is given, then it is filled (its tail zeroed) and returned as bits', () => {
    const out = new Uint32Array(3).fill(0xffffffff);
    const r = ix.match({ country: ['US'] }, { out });
    assert.equal(r.bits, out);
    assert.equal(out[1], 0);
    assert.equal(out[2], 0);
    assert.equal(out[0], ix.match({ country: ['US'] }).bits[0]);
  });

  it('when set() passes its checks or remove() removes, then epoch moves; failed writes, unknown removes and matches leave it', async () => {
    const t = new TargetingIndex();
    const e0 = t.epoch;
    assert.equal(typeof e0, 'number');
    t.set(1, [{ country: { any_of: ['US'] } }]);
    const e1 = t.epoch;
    assert.ok(e1 > e0);
    t.set(1, [{ country: { any_of: ['US'] } }]);
    const e2 = t.epoch;
    assert.ok(e2 > e1, 'a replacement with the same targeting still moves it');
    assert.throws(() => t.set(2, [] as unknown as Targeting), { code: 'ERR_INVALID_ARG' });
    assert.throws(() => t.remove(7), { code: 'ERR_UNKNOWN_ID' });
    t.match({ country: ['US'] });
    await t.matchAsync({});
    t.has(1);
    assert.equal(t.epoch, e2);
    t.remove(1);
    assert.ok(t.epoch > e2);
  });

  it('when a large id is set, then capacity and the answer length follow it', () => {
    const t = new TargetingIndex();
    t.set(1_000_000, undefined);
    assert.equal(t.capacity, 1_000_001);
    const { bits, count } = t.match({});
    assert.equal(bits.length, Math.ceil(1_000_001 / 32));
    assert.equal(count, 1);
    assert.ok(bit(bits, 1_000_000));
    assert.ok(t.memoryBytes() > 0);
  });
});

describe('TargetingIndex validation', function () {
  const ix = new TargetingIndex();
  ix.set(0, [{ country: { any_of: ['US'] } }]);

  const bad: Array<[string, unknown, RegExp]> = [
    ['an empty targeting list', [], /empty list/],
    ['targeting that is not an array', { country: { any_of: ['US'] } }, /array of conjunctions/],
    ['a conjunction that is not an object', ['US'], /targeting\[0\] must be an object/],
    ['a null conjunction', [{}, null], /targeting\[1\] must be an object/],
    ['a conjunction that is an array', [[]], /targeting\[0\] must be an object/],
    ['a predicate that is not an object', [{ country: ['US'] }], /targeting\[0\]\.country must be a predicate/],
    ['a predicate with neither list', [{ country: {} }], /targeting\[0\]\.country needs any_of and\/or none_of/],
    ['a predicate with an unknown key', [{ country: { anyOf: ['US'] } }], /unknown key "anyOf"/],
    ['a list that is not an array', [{ country: { any_of: 'US' } }], /targeting\[0\]\.country\.any_of must be an array of strings/],
    ['a null list', [{ country: { none_of: null } }], /none_of must be an array of strings/],
    ['a non-string value', [{ country: { any_of: ['US', 7] } }], /targeting\[0\]\.country\.any_of\[1\] must be a string/],
  ];
  for (const [what, t, message] of bad) {
    it(`when set() gets ${what}, then ERR_INVALID_ARG names it and the ad keeps its targeting`, () => {
      assert.throws(() => ix.set(0, t as Targeting), (e: NodeJS.ErrnoException) => {
        assert.equal(e.code, 'ERR_INVALID_ARG');
        assert.match(e.message, message);
        return true;
      });
      assert.deepEqual(Array.from(ix.matchIds({ country: ['US'] })), [0]);
      assert.equal(ix.size, 1);
    });
  }

  for (const id of [-1, 1.5, 2 ** 31, Number.NaN, '3', undefined]) {
    it(`when an id is ${String(id)}, then set and remove throw ERR_INVALID_ARG and has is false or throws`, () => {
      assert.throws(() => ix.set(id as number, undefined), { code: 'ERR_INVALID_ARG' });
      assert.throws(() => ix.remove(id as number), { code: 'ERR_INVALID_ARG' });
      if (typeof id === 'number') assert.equal(ix.has(id), false);
      else assert.throws(() => ix.has(id as unknown as number), { code: 'ERR_INVALID_ARG' });
    });
  }

  it('when remove() gets an id that was never set, then ERR_UNKNOWN_ID', () => {
    assert.throws(() => ix.remove(5), { code: 'ERR_UNKNOWN_ID' });
  });

  it('when match() gets bad attributes, then ERR_INVALID_ARG names the attribute', () => {
    const cases: Array<[unknown, RegExp]> = [
      [undefined, /attributes must be an object/],
      [['US'], /attributes must be an object/],
      [{ country: 'US' }, /attributes\.country must be an array of strings/],
      [{ country: ['US', null] }, /attributes\.country\[1\] must be a string/],
    ];
    for (const [attrs, message] of cases) {
      assert.throws(() => ix.match(attrs as RequestAttributes), (e: NodeJS.ErrnoException) => e.code === 'ERR_INVALID_ARG' && message.test(e.message));
      assert.throws(() => ix.matchIds(attrs as RequestAttributes), { code: 'ERR_INVALID_ARG' });
      assert.throws(() => ix.matchAsync(attrs as RequestAttributes), { code: 'ERR_INVALID_ARG' });
    }
  });

  it('when match() gets a bad within or out, then ERR_INVALID_ARG', () => {
    const t = new TargetingIndex();
    t.set(100, undefined);
    assert.throws(() => t.match({}, { within: [1] as unknown as Uint32Array }), /within must be a Uint32Array/);
    assert.throws(() => t.match({}, { out: new Int32Array(4) as unknown as Uint32Array }), /out must be a Uint32Array/);
    assert.throws(() => t.match({}, { out: new Uint32Array(3) }), (e: NodeJS.ErrnoException) => e.code === 'ERR_INVALID_ARG' && /needs 4/.test(e.message));
    const shared = new Uint32Array(8);
    assert.throws(() => t.match({}, { within: shared.subarray(0, 4), out: shared.subarray(2, 6) }), /must not share memory/);
    assert.throws(() => t.match({}, { within: 'x' as unknown as Uint32Array }), { code: 'ERR_INVALID_ARG' });
  });

  it('when matchAsync() is given an out buffer that is too small, then the promise rejects with ERR_INVALID_ARG', async () => {
    const t = new TargetingIndex();
    t.set(100, undefined);
    await assert.rejects(t.matchAsync({}, { out: new Uint32Array(1) }), { code: 'ERR_INVALID_ARG' });
  });
});
