import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import type { Conjunction, RequestAttributes } from '../../src/native/index';
import { parseCatalogLine } from '../../src/store/catalog-schema';
import {
  type CatalogFileRow as CatalogRow,
  type CatalogOptions,
  CATEGORIES, COMMUNITIES, COUNTRIES, INTERESTS, PLATFORMS, SENSITIVE_COMMUNITIES, Rng, Zipf, catalogCentres, generateCatalog,
  generateRequests, generateUserEmbeddings,
} from '../../src/catalog/generate';

const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;

function checkConjunction(c: Conjunction, where: string): void {
  assert.ok(c !== null && typeof c === 'object' && !Array.isArray(c), `${where} is an object`);
  for (const [name, p] of Object.entries(c)) {
    const keys = Object.keys(p);
    assert.ok(keys.length > 0 && keys.every((k) => k === 'any_of' || k === 'none_of'), `${where}.${name} keys ${keys.join()}`);
    for (const list of [p.any_of, p.none_of]) {
      if (list === undefined) continue;
      assert.ok(Array.isArray(list) && list.every((v) => typeof v === 'string'), `${where}.${name} lists strings`);
      assert.equal(new Set(list).size, list.length, `${where}.${name} has no repeats`);
    }
  }
}

/** The contract's field rules (CONTRACT section 1) for one row: the catalog schema's verdict, plus the generator's own promises. */
function checkRow(row: CatalogRow, dim: number): void {
  const where = row.ad_id;
  const parsed = parseCatalogLine(JSON.stringify(row), dim);
  assert.ok('row' in parsed, `${where}: ${JSON.stringify('issues' in parsed ? parsed.issues : [])}`);
  assert.match(row.ad_id, /^[A-Za-z0-9._:/-]{1,128}$/);
  for (const f of ['advertiser_id', 'campaign_id', 'category'] as const) {
    assert.ok(typeof row[f] === 'string' && row[f].length > 0, `${where}.${f}`);
  }
  assert.ok(CATEGORIES.includes(row.category));
  assert.ok(row.status === undefined || row.status === 'active' || row.status === 'paused', `${where}.status`);
  assert.ok(Number.isSafeInteger(row.bid_micros) && row.bid_micros >= 0, `${where}.bid_micros`);
  if (row.daily_budget_micros !== undefined) {
    assert.ok(Number.isSafeInteger(row.daily_budget_micros) && row.daily_budget_micros >= 0, `${where}.daily_budget_micros`);
  }
  for (const f of ['quality', 'ctr_prior'] as const) {
    const v = row[f];
    if (v !== undefined) assert.ok(v >= 0 && v <= 1, `${where}.${f} = ${v}`);
  }
  assert.equal(row.embedding.length, dim);
  assert.ok(row.embedding.every(Number.isFinite), `${where}.embedding finite`);
  if (row.targeting !== undefined) {
    assert.ok(Array.isArray(row.targeting) && row.targeting.length > 0, `${where}.targeting non-empty`);
    row.targeting.forEach((c, i) => checkConjunction(c, `${where}.targeting[${i}]`));
  }
  for (const f of ['start_time', 'end_time'] as const) {
    const v = row[f];
    if (v !== undefined) assert.match(v, RFC3339);
  }
  if (row.start_time !== undefined && row.end_time !== undefined) {
    assert.ok(Date.parse(row.start_time) < Date.parse(row.end_time), `${where} window`);
  }
  // The row survives a JSON Lines round trip unchanged.
  assert.deepEqual(JSON.parse(JSON.stringify(row)), row);
}

describe('generateCatalog', function () {
  const rows = [...generateCatalog({ count: 5000, dim: 16, seed: 3 })];

  it('when generated twice with one seed, then the rows are identical; with another seed, then they differ', () => {
    assert.deepEqual([...generateCatalog({ count: 300, dim: 16, seed: 3 })], rows.slice(0, 300));
    assert.notDeepEqual([...generateCatalog({ count: 300, dim: 16, seed: 4 })], rows.slice(0, 300));
  });

  it('when 5,000 rows are generated, then every row satisfies the contract and ad ids are unique', () => {
    for (const row of rows) checkRow(row, 16);
    assert.equal(new Set(rows.map((r) => r.ad_id)).size, rows.length);
  });

  it('when 5,000 rows are generated, then the mix is realistic: some untargeted, some multi-conjunction, some paused, exclusions, skewed advertisers', () => {
    const share = (pred: (r: CatalogRow) => boolean): number => rows.filter(pred).length / rows.length;
    const untargeted = share((r) => r.targeting === undefined);
    assert.ok(untargeted > 0.04 && untargeted < 0.12, `untargeted ${untargeted}`);
    const multi = share((r) => (r.targeting?.length ?? 0) > 1);
    assert.ok(multi > 0.01 && multi < 0.06, `multi-conjunction ${multi}`);
    const paused = share((r) => r.status === 'paused');
    assert.ok(paused > 0.03 && paused < 0.12, `paused ${paused}`);
    assert.ok(share((r) => r.targeting?.some((c) => c.community?.none_of !== undefined) ?? false) > 0.01);
    assert.ok(share((r) => r.targeting?.some((c) => c.community?.any_of !== undefined) ?? false) > 0.05);
    assert.ok(share((r) => r.targeting?.some((c) => c.country?.any_of?.includes('US')) ?? false) > 0.2);
    const perAdvertiser = new Map<string, number>();
    for (const r of rows) perAdvertiser.set(r.advertiser_id, (perAdvertiser.get(r.advertiser_id) ?? 0) + 1);
    const sizes = [...perAdvertiser.values()].sort((a, b) => b - a);
    assert.ok(sizes[0] > 20 * sizes[Math.floor(sizes.length / 2)], `largest ${sizes[0]}, median ${sizes[Math.floor(sizes.length / 2)]}`);
  });

  it('when the generator is consumed lazily, then rows arrive one at a time', () => {
    const it = generateCatalog({ count: 1_000_000_000, dim: 4 });
    assert.equal(it.next().value?.ad_id, 'ad-0');
    assert.equal(it.next().value?.ad_id, 'ad-1');
  });

  it('when options are out of range, then it throws', () => {
    assert.throws(() => generateCatalog({ count: 1, dim: 0 }).next());
    assert.throws(() => generateCatalog({ count: -1, dim: 4 }).next());
  });
});

/** sha256 of the rows as JSON Lines. */
function fingerprint(options: CatalogOptions): string {
  const h = createHash('sha256');
  for (const row of generateCatalog(options)) h.update(JSON.stringify(row) + '\n');
  return h.digest('hex');
}

function distance(a: ArrayLike<number>, b: ArrayLike<number>, bOffset = 0): number {
  let d = 0;
  for (let j = 0; j < a.length; j++) d += (a[j] - b[bOffset + j]) ** 2;
  return Math.sqrt(d);
}

/** Index of the centre nearest to `e`, and its distance. */
function nearestCentre(e: ArrayLike<number>, centres: Float64Array): { index: number; distance: number } {
  const dim = e.length;
  let best = { index: -1, distance: Infinity };
  for (let k = 0; k < centres.length / dim; k++) {
    const d = distance(e, centres, k * dim);
    if (d < best.distance) best = { index: k, distance: d };
  }
  return best;
}

function median(xs: number[]): number {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

describe('generateCatalog, mixture shape pinned', function () {
  // Fingerprints of the rows as generated before the 'clustered' shape existed.
  const pinned: [CatalogOptions, string][] = [
    [{ count: 300, dim: 16, seed: 3 }, '66f7574c01580be390ec7035629a4f21a256720bca7bcaeeb3a06e57c8df32e9'],
    [{ count: 2000, dim: 64, seed: 7, clusters: 32 }, '16cd919fe568de43b75ae66dfc112e58921dada5e5478e9a6c4563eee2dd2e79'],
    [{ count: 1000, dim: 8 }, '44be4c7b676feff96892fb18302569c282445fe05a5993ee18768fe4ffe6fdf1'],
  ];

  it('when shape is omitted or "mixture", then the rows are byte for byte the ones generated before shapes existed', () => {
    for (const [options, hash] of pinned) {
      assert.equal(fingerprint(options), hash, JSON.stringify(options));
      assert.equal(fingerprint({ ...options, shape: 'mixture' }), hash, `${JSON.stringify(options)} with shape 'mixture'`);
    }
  });
});

describe('generateCatalog, clustered shape', function () {
  const dim = 16;
  const rows = [...generateCatalog({ count: 5000, dim, seed: 3, shape: 'clustered' })];
  const centres = catalogCentres({ dim, seed: 3, shape: 'clustered' });

  it('when generated twice with one seed, then the clustered rows are identical; with another seed, or as a mixture, then they differ', () => {
    assert.deepEqual([...generateCatalog({ count: 300, dim, seed: 3, shape: 'clustered' })], rows.slice(0, 300));
    assert.notDeepEqual([...generateCatalog({ count: 300, dim, seed: 4, shape: 'clustered' })], rows.slice(0, 300));
    assert.notDeepEqual([...generateCatalog({ count: 300, dim, seed: 3 })], rows.slice(0, 300));
  });

  it('when 5,000 clustered rows are generated, then every row satisfies the contract and ad ids are unique', () => {
    for (const row of rows) checkRow(row, dim);
    assert.equal(new Set(rows.map((r) => r.ad_id)).size, rows.length);
  });

  it('when 5,000 clustered rows are generated, then bids are heavy-tailed: max/median > 50 and the top 1% of ads hold > 10% of all bids', () => {
    const bids = rows.map((r) => r.bid_micros).sort((a, b) => a - b);
    const max = bids[bids.length - 1];
    assert.ok(max / median(bids) > 50, `max ${max}, median ${median(bids)}`);
    assert.ok(max <= 1e9, `max ${max}`);
    const sum = bids.reduce((a, b) => a + b, 0);
    const top = bids.slice(-bids.length / 100).reduce((a, b) => a + b, 0);
    assert.ok(top / sum > 0.1, `top 1% share ${top / sum}`);
  });

  it('when 5,000 clustered rows are generated, then ctr_prior spreads wider than in the mixture shape', () => {
    const logSd = (rs: CatalogRow[]): number => {
      const logs = rs.filter((r) => r.ctr_prior !== undefined).map((r) => Math.log(r.ctr_prior as number));
      const mean = logs.reduce((a, b) => a + b, 0) / logs.length;
      return Math.sqrt(logs.reduce((a, b) => a + (b - mean) ** 2, 0) / logs.length);
    };
    const clustered = logSd(rows);
    const mixture = logSd([...generateCatalog({ count: 5000, dim, seed: 3 })]);
    assert.ok(clustered > 0.85 && mixture < 0.8, `log sd clustered ${clustered}, mixture ${mixture}`);
  });

  it('when clustered rows are assigned to their nearest centre, then each lies within 1.0 of it and the largest cluster holds > 5x the median cluster', () => {
    const sizes = new Map<number, number>();
    for (const row of rows) {
      const { index, distance: d } = nearestCentre(row.embedding, centres);
      assert.ok(d < 1, `${row.ad_id} is ${d} from its nearest centre`);
      sizes.set(index, (sizes.get(index) ?? 0) + 1);
    }
    const counts = [...sizes.values()];
    const largest = Math.max(...counts);
    assert.ok(largest > 5 * median(counts), `largest ${largest}, median ${median(counts)} over ${counts.length} non-empty clusters`);
    assert.ok(largest > rows.length / 10, `largest ${largest}`);
  });

  it('when clustered rows are generated, then targeting, status and advertisers keep the mixture shape\'s mix', () => {
    const share = (pred: (r: CatalogRow) => boolean): number => rows.filter(pred).length / rows.length;
    const untargeted = share((r) => r.targeting === undefined);
    assert.ok(untargeted > 0.04 && untargeted < 0.12, `untargeted ${untargeted}`);
    const paused = share((r) => r.status === 'paused');
    assert.ok(paused > 0.03 && paused < 0.12, `paused ${paused}`);
    assert.ok(share((r) => r.daily_budget_micros !== undefined) > 0.75);
    assert.ok(share((r) => r.start_time !== undefined) > 0.1);
    const perAdvertiser = new Map<string, number>();
    for (const r of rows) perAdvertiser.set(r.advertiser_id, (perAdvertiser.get(r.advertiser_id) ?? 0) + 1);
    const sizes = [...perAdvertiser.values()];
    assert.ok(Math.max(...sizes) > 20 * median(sizes), `largest advertiser ${Math.max(...sizes)}, median ${median(sizes)}`);
  });

  it('when options are out of range, then it throws', () => {
    assert.throws(() => generateCatalog({ count: 1, dim: 4, shape: 'spiral' as 'clustered' }).next(), /shape/);
    assert.throws(() => generateCatalog({ count: 1, dim: 4, shape: 'clustered', clusters: 2.5 }).next(), /clusters/);
  });
});

describe('generateUserEmbeddings', function () {
  const dim = 16;

  it('when generated twice with one seed, then the embeddings are identical; with another seed, then they differ', () => {
    for (const shape of ['mixture', 'clustered'] as const) {
      const users = generateUserEmbeddings(50, { dim, seed: 3, shape });
      assert.equal(users.length, 50);
      assert.ok(users.every((u) => u instanceof Float32Array && u.length === dim && u.every(Number.isFinite)));
      assert.deepEqual(generateUserEmbeddings(50, { dim, seed: 3, shape }), users);
      assert.notDeepEqual(generateUserEmbeddings(50, { dim, seed: 4, shape }), users);
    }
  });

  it('when users are generated for a clustered catalog, then each lies near one of its centres and the median nearest ad is < 1 away, far closer than for another seed', () => {
    const rows = [...generateCatalog({ count: 5000, dim, seed: 3, shape: 'clustered' })];
    const centres = catalogCentres({ dim, seed: 3, shape: 'clustered' });
    const users = generateUserEmbeddings(100, { dim, seed: 3, shape: 'clustered' });
    for (const u of users) assert.ok(nearestCentre(u, centres).distance < 1);
    const nearestAd = (u: Float32Array): number => Math.min(...rows.map((r) => distance(u, r.embedding)));
    const same = median(users.map(nearestAd));
    const other = median(generateUserEmbeddings(100, { dim, seed: 4, shape: 'clustered' }).map(nearestAd));
    assert.ok(same < 1 && other > 2, `median nearest ad: same seed ${same}, other seed ${other}`);
  });

  it('when users are generated for a mixture catalog, then their nearest ad is closer than for another seed\'s users', () => {
    const rows = [...generateCatalog({ count: 5000, dim, seed: 3 })];
    const nearestAd = (u: Float32Array): number => Math.min(...rows.map((r) => distance(u, r.embedding)));
    const same = median(generateUserEmbeddings(100, { dim, seed: 3 }).map(nearestAd));
    const other = median(generateUserEmbeddings(100, { dim, seed: 4 }).map(nearestAd));
    assert.ok(same < 0.7 * other, `median nearest ad: same seed ${same}, other seed ${other}`);
  });

  it('when options are out of range, then it throws', () => {
    assert.throws(() => generateUserEmbeddings(-1, { dim }));
    assert.throws(() => generateUserEmbeddings(1, { dim: 0 }));
  });
});

describe('generateRequests', function () {
  const requests = generateRequests(2000, 5);

  it('when generated twice with one seed, then the requests are identical', () => {
    assert.deepEqual(generateRequests(2000, 5), requests);
  });

  it('when 2,000 requests are generated, then they are string arrays and include the edge cases', () => {
    const has = (pred: (r: RequestAttributes) => boolean): boolean => requests.some(pred);
    for (const r of requests) {
      for (const v of Object.values(r)) assert.ok(Array.isArray(v) && v.every((s) => typeof s === 'string'));
    }
    assert.ok(has((r) => r.country === undefined), 'missing country');
    assert.ok(has((r) => r.community !== undefined && r.community.length === 0) || has((r) => r.interests?.length === 0), 'empty list');
    assert.ok(has((r) => r.country !== undefined && r.country.length === 2 && r.country[0] === r.country[1]), 'repeated value');
    assert.ok(has((r) => r.community?.some((c) => SENSITIVE_COMMUNITIES.includes(c)) ?? false), 'sensitive community');
    assert.ok(has((r) => r.language !== undefined), 'attribute no ad targets');
    const us = requests.filter((r) => r.country?.includes('US')).length / requests.length;
    assert.ok(us > 0.15, `US share ${us}`);
  });
});

describe('generator vocabularies and samplers', function () {
  it('when vocabularies are read, then they are non-empty and free of duplicates', () => {
    for (const list of [COUNTRIES, PLATFORMS, CATEGORIES, INTERESTS, COMMUNITIES]) {
      assert.ok(list.length > 0);
      assert.equal(new Set(list).size, list.length);
    }
    assert.equal(COMMUNITIES.length, 5000);
    assert.ok(COMMUNITIES.every((c) => c.startsWith('r/')));
  });

  it('when a Zipf sampler draws, then rank 0 is the most frequent and every rank is in range', () => {
    const z = new Zipf(100, 1.1);
    const rng = new Rng(1);
    const counts = new Array<number>(100).fill(0);
    for (let i = 0; i < 20_000; i++) counts[z.sample(rng)]++;
    assert.equal(counts.indexOf(Math.max(...counts)), 0);
    assert.ok(counts[0] > 5 * counts[20]);
  });
});
