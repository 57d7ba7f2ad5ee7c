import { strict as assert } from 'node:assert';
import type { Conjunction, RequestAttributes } from '../../src/native/index';
import { parseCatalogLine } from '../../src/store/catalog-schema';
import {
  type CatalogFileRow as CatalogRow,
  CATEGORIES, COMMUNITIES, COUNTRIES, INTERESTS, PLATFORMS, SENSITIVE_COMMUNITIES, Rng, Zipf, generateCatalog, generateRequests,
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
