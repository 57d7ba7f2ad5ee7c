import { strict as assert } from 'node:assert';
import { popularitySchema } from '../../src/config/schema';
import { PopularityState, logAddExp2, type ResolvedEvent } from '../../src/serving/popularity';

const H = 3600;
const cfg = (o: Record<string, unknown> = {}) => popularitySchema.parse({ half_life_s: H, ...o });
const ev = (id: number, click: boolean, t: number, segments: string[] = []): ResolvedEvent => ({ id, adId: `a${id}`, click, timestampMs: t, segments });

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
});
