import { strict as assert } from 'node:assert';
import { popularitySchema } from '../../src/config/schema';
import { PopularityState, logAddExp2, type PopularityRecord, type PopularityUpdate, type ResolvedEvent } from '../../src/serving/popularity';
import { rng as prng } from '../fixtures/vectors';

const H = 3600;
const cfg = (o: Record<string, unknown> = {}) => popularitySchema.parse({ half_life_s: H, ...o });
const ev = (id: number, click: boolean, t: number, segments: string[] = []): ResolvedEvent => ({ id, adId: `a${id}`, click, timestampMs: t, segments });

/** Asserts equal id lists, naming the first difference (a deepEqual diff of thousands of ids takes minutes). */
function assertSameOrder(got: ArrayLike<number>, want: readonly number[], what: string): void {
  let i = 0;
  while (i < got.length && i < want.length && got[i] === want[i]) i++;
  if (i < got.length || i < want.length) {
    const around = (xs: ArrayLike<number>) => Array.from(xs).slice(Math.max(0, i - 2), i + 3).join(',');
    assert.fail(`${what}: lengths ${got.length} vs ${want.length}, first difference at ${i}: got …${around(got)}…, want …${around(want)}…`);
  }
}

/** Runs `f` with every sort (Array and typed arrays) throwing. */
function withoutSorting<T>(f: () => T): T {
  const typed = Object.getPrototypeOf(Uint32Array.prototype) as { sort: unknown };
  const saved = [Array.prototype.sort, typed.sort];
  const no = () => {
    throw new Error('sorted on the read path');
  };
  Array.prototype.sort = no;
  typed.sort = no;
  try {
    return f();
  } finally {
    Array.prototype.sort = saved[0] as typeof Array.prototype.sort;
    typed.sort = saved[1];
  }
}

/** Brute-force reference: the counters each write should leave, ranked by a fresh sort (keys desc, ids asc). */
class Reference {
  readonly segs = new Map<string, Map<number, { li: number; lc: number }>>();
  /** Segments loaded since they were last ordered: the only ones ranked() may sort. */
  readonly dirty = new Set<string>();
  constructor(public h: number, public wc: number, public wi: number) {}
  private seg(key: string) {
    let m = this.segs.get(key);
    if (!m) this.segs.set(key, (m = new Map()));
    return m;
  }
  private counters(r: PopularityRecord) {
    const f = r.hl / this.h;
    return { li: r.li * f, lc: r.lc * f };
  }
  load(id: number, seg: string, r: PopularityRecord) {
    this.seg(seg).set(id, this.counters(r));
    this.dirty.add(seg);
  }
  apply(us: ReadonlyArray<PopularityUpdate>) {
    for (const u of us) {
      this.seg(u.segment).set(u.id, this.counters(u.record));
      this.dirty.delete(u.segment);
    }
  }
  remove(ids: number[]) {
    for (const [key, m] of this.segs) for (const id of ids) if (m.delete(id)) this.dirty.delete(key);
  }
  replace(entries: ReadonlyArray<{ id: number; records: ReadonlyArray<{ segment: string; record: PopularityRecord }> }>) {
    const latest = new Map(entries.map((e) => [e.id, e.records]));
    for (const [id, records] of latest) {
      for (const [key, m] of this.segs) if (m.delete(id)) this.dirty.delete(key);
      for (const { segment, record } of records) {
        this.seg(segment).set(id, this.counters(record));
        this.dirty.delete(segment);
      }
    }
  }
  configure(h: number, wc: number, wi: number) {
    if (h !== this.h) {
      const f = this.h / h;
      for (const m of this.segs.values()) for (const c of m.values()) (c.li *= f), (c.lc *= f);
    }
    if (h !== this.h || wc !== this.wc || wi !== this.wi) this.dirty.clear();
    [this.h, this.wc, this.wi] = [h, wc, wi];
  }
  ranked(seg: string): number[] {
    const key = (c: { li: number; lc: number }) => {
      const k = logAddExp2(c.lc + Math.log2(this.wc), c.li + Math.log2(this.wi));
      return Number.isNaN(k) ? -Infinity : k;
    };
    const rows = [...(this.segs.get(seg) ?? new Map<number, { li: number; lc: number }>())].map(([id, c]) => ({ id, k: key(c) }));
    rows.sort((a, b) => (a.k > b.k ? -1 : a.k < b.k ? 1 : a.id - b.id));
    return rows.map((r) => r.id);
  }
}

describe('PopularityState', () => {
  it('when sums are added in the log domain, then logAddExp2 matches the direct sum', () => {
    assert.equal(logAddExp2(-Infinity, 3), 3);
    assert.ok(Math.abs(2 ** logAddExp2(3, 5) - 40) < 1e-9);
    assert.ok(Math.abs(logAddExp2(1e6, 1e6) - (1e6 + 1)) < 1e-9);
  });

  it('when one half-life passes, then decayed counts halve', () => {
    const p = new PopularityState(cfg());
    const t0 = Date.UTC(2026, 0, 1);
    p.apply(p.plan([ev(1, false, t0), ev(1, false, t0), ev(1, true, t0)]));
    const now = p.decayed(1, t0);
    assert.ok(Math.abs(now.impressions - 2) < 1e-9 && Math.abs(now.clicks - 1) < 1e-9);
    const later = p.decayed(1, t0 + H * 1000);
    assert.ok(Math.abs(later.impressions - 1) < 1e-9 && Math.abs(later.clicks - 0.5) < 1e-9);
  });

  it('when ads have different engagement, then ranked() orders by weighted decayed engagement, per segment too', () => {
    const p = new PopularityState(cfg({ click_weight: 1, impression_weight: 0.1 }));
    const t = Date.UTC(2026, 0, 1);
    p.apply(p.plan([ev(1, false, t, ['country=US']), ev(2, true, t, ['country=DE']), ev(3, true, t, ['country=US']), ev(3, true, t)]));
    assert.deepEqual(Array.from(p.ranked()), [3, 2, 1]);
    assert.deepEqual(Array.from(p.ranked({ attribute: 'country', value: 'US' })), [3, 1]);
    assert.deepEqual(Array.from(p.ranked({ attribute: 'country', value: 'FR' })), []);
  });

  it('when an older click competes with a fresh one, then the fresh one ranks first', () => {
    const p = new PopularityState(cfg());
    const t = Date.UTC(2026, 0, 1);
    p.apply(p.plan([ev(1, true, t - 10 * H * 1000), ev(2, true, t)]));
    assert.deepEqual(Array.from(p.ranked()), [2, 1]);
  });

  it('when an ad is removed, then it leaves every ranking and its rate is 0', () => {
    const p = new PopularityState(cfg());
    const t = Date.UTC(2026, 0, 1);
    p.apply(p.plan([ev(1, true, t, ['country=US']), ev(2, true, t)]));
    p.remove(1);
    assert.deepEqual(Array.from(p.ranked()), [2]);
    assert.deepEqual(Array.from(p.ranked({ attribute: 'country', value: 'US' })), []);
    assert.equal(p.rate(1, t), 0);
  });

  it('when an ad is removed and its id comes back before the next ranking, then it is ranked once', () => {
    const p = new PopularityState(cfg());
    const t = Date.UTC(2026, 0, 1);
    p.apply(p.plan([ev(1, true, t), ev(2, true, t), ev(2, true, t)]));
    assert.deepEqual(Array.from(p.ranked()), [2, 1]);
    p.remove(1);
    p.remove(2);
    p.apply(p.plan([ev(1, true, t)]));
    assert.deepEqual(Array.from(p.ranked()), [1]);
  });

  it('when rate() is read, then it is smoothed clicks / (impressions + prior)', () => {
    const p = new PopularityState(cfg({ prior_impressions: 10 }));
    const t = Date.UTC(2026, 0, 1);
    const events = [ev(1, true, t)];
    for (let i = 0; i < 10; i++) events.push(ev(1, false, t));
    p.apply(p.plan(events));
    assert.ok(Math.abs(p.rate(1, t) - 1 / 20) < 1e-9);
  });

  it('when a persisted record is loaded at another half-life, then it is rescaled and a single event keeps its value', () => {
    const a = new PopularityState(cfg({ half_life_s: 100 }));
    const t = Date.UTC(2026, 0, 1);
    const [u] = a.plan([ev(1, true, t)]);
    const b = new PopularityState(cfg({ half_life_s: 200 }));
    b.load(1, '', u.record);
    assert.ok(Math.abs(b.decayed(1, t).clicks - 1) < 1e-9);
    assert.ok(Math.abs(b.decayed(1, t + 200_000).clicks - 0.5) < 1e-9);
  });

  it('when segments are derived, then only configured attributes count and repeats collapse', () => {
    const p = new PopularityState(cfg({ segment_attributes: ['country', 'platform'] }));
    assert.deepEqual(p.segmentsOf({ country: ['US', 'US'], platform: ['ios'], community: ['x'] }), ['country=US', 'platform=ios']);
  });

  it('when events arrive and time passes, then rateBound() stays at or above every ad\'s rate, now and later', () => {
    const p = new PopularityState(cfg({ prior_impressions: 5 }));
    assert.equal(p.rateBound(), 0);
    const t = Date.now();
    p.apply(p.plan([ev(1, true, t), ev(1, true, t), ev(2, false, t), ev(2, true, t), ev(3, false, t)]));
    const bound = p.rateBound();
    for (const id of [1, 2, 3]) {
      for (const dt of [0, 1000, H * 1000, 10 * H * 1000]) assert.ok(p.rate(id, Date.now() + dt) <= bound, `ad ${id} at +${dt} ms`);
    }
    assert.ok(Math.abs(bound - p.rate(1, Date.now())) < 1e-6, 'the bound is the largest rate, not a loose constant');
    p.configure(cfg({ prior_impressions: 1 }));
    assert.ok(p.rateBound() > bound, 'a smaller prior raises rates, and the bound with them');
    assert.ok(p.rate(1, Date.now()) <= p.rateBound());
  });

  it('when random loads, settles, applies, removes, replaceAds and configures run, then every ranking equals a fresh sort of the counters, and only a loaded segment is ever sorted on read', () => {
    const SEGS = ['', 'c=a', 'c=b', 'p=x'];
    const asQuery = (k: string) => (k === '' ? undefined : { attribute: k.split('=')[0], value: k.split('=')[1] });
    for (let seed = 1; seed <= 40; seed++) {
      const rnd = prng(seed);
      const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)];
      const ids = 4 + Math.floor(rnd() * 60);
      const t0 = Date.now();
      const x0 = t0 / (H * 1000);
      // A few values only, so that equal keys (ties broken by id) are common.
      const logs = [-Infinity, x0, x0 + 0.25, x0 + 1, x0 + 3];
      const record = (): PopularityRecord => {
        const hl = pick([H, 2 * H]);
        return { li: (pick(logs) * H) / hl, lc: (pick(logs) * H) / hl, hl };
      };
      const someSegs = () => SEGS.filter(() => rnd() < 0.5);
      const p = new PopularityState(cfg({ prior_impressions: 3 }));
      const ref = new Reference(H, 1, 0.02);
      for (let i = Math.floor(rnd() * 3 * ids); i > 0; i--) {
        const [id, seg, r] = [Math.floor(rnd() * ids), pick(SEGS), record()];
        p.load(id, seg, r);
        ref.load(id, seg, r);
      }
      if (rnd() < 0.7) {
        p.settle();
        ref.dirty.clear();
      }
      const log: string[] = [];
      for (let step = 0; step < 60; step++) {
        const op = rnd();
        if (op < 0.35) {
          const events: ResolvedEvent[] = [];
          for (let i = 1 + Math.floor(rnd() * 12); i > 0; i--) {
            events.push(ev(Math.floor(rnd() * ids), rnd() < 0.3, t0 + Math.floor(rnd() * 9) * H * 250, someSegs().filter((s) => s !== '')));
          }
          const us = p.plan(events);
          log.push(`apply ${us.length}`);
          p.apply(us);
          ref.apply(us);
        } else if (op < 0.45) {
          // Hand-made updates: other half-lives, equal records, the same (id, segment) twice.
          const us: PopularityUpdate[] = [];
          for (let i = 1 + Math.floor(rnd() * 6); i > 0; i--) {
            const id = Math.floor(rnd() * ids);
            us.push({ id, adId: `a${id}`, segment: pick(SEGS), record: record() });
          }
          log.push(`apply records ${us.length}`);
          p.apply(us);
          ref.apply(us);
        } else if (op < 0.55) {
          const gone = Array.from({ length: 1 + Math.floor(rnd() * 4) }, () => Math.floor(rnd() * ids));
          log.push(`remove ${gone}`);
          if (gone.length === 1 && rnd() < 0.5) p.remove(gone[0]);
          else p.remove(gone);
          ref.remove(gone);
        } else if (op < 0.75) {
          const entries = Array.from({ length: 1 + Math.floor(rnd() * 5) }, () => ({
            id: Math.floor(rnd() * ids),
            records: someSegs().map((segment) => ({ segment, record: record() })),
          }));
          log.push(`replaceAds ${entries.length}`);
          p.replaceAds(entries);
          ref.replace(entries);
        } else if (op < 0.83) {
          const [h, wc, wi] = [pick([H, 2 * H, H / 2]), pick([0, 0.5, 1]), pick([0, 0.02, 1])];
          log.push(`configure ${h} ${wc} ${wi}`);
          p.configure(cfg({ half_life_s: h, click_weight: wc, impression_weight: wi, prior_impressions: pick([1, 3]) }));
          ref.configure(h, wc, wi);
        } else if (op < 0.93) {
          const [id, seg, r] = [Math.floor(rnd() * ids), pick(SEGS), record()];
          log.push(`load ${id} ${seg}`);
          p.load(id, seg, r);
          ref.load(id, seg, r);
        } else {
          log.push('settle');
          p.settle();
          ref.dirty.clear();
        }
        if (rnd() < 0.3) continue; // leave loaded segments dirty for a while: later writes must settle them
        for (const seg of SEGS) {
          const want = ref.ranked(seg);
          const got = ref.dirty.has(seg) ? p.ranked(asQuery(seg)) : withoutSorting(() => p.ranked(asQuery(seg)));
          ref.dirty.delete(seg);
          assertSameOrder(got, want, `seed ${seed}, segment '${seg}', after ${log.join('; ')}`);
        }
        const now = Date.now();
        for (const id of ref.segs.get('')?.keys() ?? []) {
          assert.ok(p.rate(id, now) <= p.rateBound(), `seed ${seed}: rate of ${id} above the bound after ${log.join('; ')}`);
        }
      }
    }
  });

  it('when a batch moves many ids at once, then the merge keeps one sorted copy of each (large segment)', () => {
    const rnd = prng(7);
    const p = new PopularityState(cfg());
    const ref = new Reference(H, 1, 0.02);
    const x0 = Date.UTC(2026, 0, 1) / (H * 1000);
    for (let id = 0; id < 5000; id++) {
      const r = { li: x0 + Math.floor(rnd() * 50) / 8, lc: rnd() < 0.5 ? -Infinity : x0 + Math.floor(rnd() * 50) / 8, hl: H };
      p.load(id, '', r);
      ref.load(id, '', r);
    }
    p.settle();
    for (let round = 0; round < 20; round++) {
      const us: PopularityUpdate[] = [];
      for (let i = 0; i < 300; i++) {
        const id = Math.floor(rnd() * 6000);
        us.push({ id, adId: `a${id}`, segment: '', record: { li: x0 + Math.floor(rnd() * 60) / 8, lc: -Infinity, hl: H } });
      }
      p.apply(us);
      ref.apply(us);
      const gone = Array.from({ length: 200 }, () => Math.floor(rnd() * 6000));
      p.remove(gone);
      ref.remove(gone);
      assertSameOrder(withoutSorting(() => p.ranked()), ref.ranked(''), `round ${round}`);
    }
  });

  it('when plan() is given the stored records as base, then sums start from them (rescaled), not from memory', () => {
    const p = new PopularityState(cfg());
    const t = Date.UTC(2026, 0, 1);
    p.apply(p.plan([ev(1, true, t), ev(1, true, t), ev(1, true, t, ['country=US'])]));
    // Another process stored 5 clicks; nothing for country=US.
    const stored: PopularityRecord = { li: -Infinity, lc: t / (H * 1000) + Math.log2(5), hl: H };
    const asked: string[] = [];
    const us = p.plan([ev(1, true, t, ['country=US'])], (adId, segment) => {
      asked.push(`${adId}|${segment}`);
      return segment === '' ? stored : undefined;
    });
    assert.deepEqual(asked.sort(), ['a1|', 'a1|country=US']);
    const overall = us.find((u) => u.segment === '')!;
    const us_ = us.find((u) => u.segment === 'country=US')!;
    assert.equal(overall.record.hl, H);
    assert.ok(Math.abs(2 ** (overall.record.lc - t / (H * 1000)) - 6) < 1e-9, 'stored 5 + this 1, not memory 3 + 1');
    assert.ok(Math.abs(2 ** (us_.record.lc - t / (H * 1000)) - 1) < 1e-9, 'no stored record: from zero, not memory 1 + 1');
    const [rescaled] = p.plan([ev(1, true, t)], () => ({ li: -Infinity, lc: t / (2 * H * 1000), hl: 2 * H }));
    assert.equal(rescaled.record.hl, H);
    assert.ok(Math.abs(2 ** (rescaled.record.lc - t / (H * 1000)) - 2) < 1e-9, 'a stored click at twice the half-life, rescaled, + this 1');
    const mem = p.plan([ev(1, true, t)]).find((u) => u.segment === '')!;
    assert.ok(Math.abs(2 ** (mem.record.lc - t / (H * 1000)) - 4) < 1e-9, 'without base: memory 3 + 1');
  });

  it('when replaceAds() lists some segments of an ad, then those become exactly the records, the ad leaves the others, and the rate bound follows', () => {
    const p = new PopularityState(cfg({ prior_impressions: 1 }));
    const t = Date.now();
    p.apply(p.plan([ev(1, false, t, ['country=US', 'country=DE']), ev(2, false, t, ['country=US', 'country=DE']), ev(2, false, t)]));
    assert.deepEqual(Array.from(p.ranked()), [2, 1]);
    const x = t / (H * 1000);
    const before = p.rateBound();
    p.replaceAds([{ id: 1, records: [
      { segment: '', record: { li: x / 2 + 1.5, lc: x / 2 + 1.5, hl: 2 * H } }, // at twice the half-life: x + 3 once rescaled, 8 of each
      { segment: 'country=US', record: { li: x, lc: -Infinity, hl: H } },
    ] }]);
    assert.deepEqual(Array.from(p.ranked()), [1, 2]);
    assert.deepEqual(Array.from(p.ranked({ attribute: 'country', value: 'DE' })), [2]);
    assert.deepEqual(Array.from(p.ranked({ attribute: 'country', value: 'US' })), [1, 2]);
    const d = p.decayed(1, t);
    assert.ok(Math.abs(d.impressions - 8) < 1e-6 && Math.abs(d.clicks - 8) < 1e-6, 'exactly the record, rescaled');
    assert.ok(p.rateBound() > before && p.rate(1, Date.now()) <= p.rateBound());
    p.replaceAds([{ id: 2, records: [] }]);
    assert.deepEqual(Array.from(p.ranked()), [1]);
    assert.deepEqual(Array.from(p.ranked({ attribute: 'country', value: 'DE' })), []);
    assert.equal(p.rate(2, t), 0);
  });

  it('when records are bulk-loaded, then settle() orders them once and ranked() no longer sorts', () => {
    const p = new PopularityState(cfg());
    const x = Date.UTC(2026, 0, 1) / (H * 1000);
    p.load(3, '', { li: x, lc: -Infinity, hl: H });
    p.load(1, '', { li: x + 1, lc: -Infinity, hl: H });
    p.load(2, '', { li: x, lc: -Infinity, hl: H });
    p.settle();
    assert.deepEqual(Array.from(withoutSorting(() => p.ranked())), [1, 2, 3]);
    p.configure(cfg({ click_weight: 0, impression_weight: 0 }));
    assert.deepEqual(Array.from(withoutSorting(() => p.ranked())), [1, 2, 3], 'all keys -Infinity: by id');
  });
});
