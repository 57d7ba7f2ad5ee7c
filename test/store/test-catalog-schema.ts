import { strict as assert } from 'node:assert';
import { parseCatalogLine } from '../../src/store/catalog-schema';
import { row } from '../fixtures/catalog';

const issues = (obj: unknown, dim?: number) => {
  const r = parseCatalogLine(typeof obj === 'string' ? obj : JSON.stringify(obj), dim);
  return 'issues' in r ? r.issues.map((i) => `${i.field}: ${i.reason}`) : [];
};

describe('catalog row schema', () => {
  it('when a row is valid, then defaults are filled in', () => {
    const r = parseCatalogLine(JSON.stringify(row(1)));
    assert.ok('row' in r);
    assert.equal(r.row.status, 'active');
    assert.equal(r.row.quality, 0.5);
    assert.equal(r.row.ctr_prior, 0.01);
    assert.equal(r.row.daily_budget_micros, undefined);
  });

  it('when the contract example is parsed, then it is accepted as is', () => {
    const line =
      '{"ad_id":"a1","advertiser_id":"v1","campaign_id":"c1","category":"gaming","bid_micros":1500000,"embedding":[0.1,0.2,0.3],"targeting":[{"country":{"any_of":["US","CA"]},"community":{"none_of":["r/nsfw"]}}]}';
    assert.deepEqual(issues(line), []);
  });

  const bad: Array<[string, Record<string, unknown> | string, RegExp]> = [
    ['invalid JSON', '{"ad_id":', /^\(row\): invalid JSON/],
    ['a non-object', '[1,2]', /^\(row\): must be a JSON object/],
    ['a missing ad_id', { ...row(1), ad_id: undefined }, /^ad_id: /],
    ['an ad_id with a space', row(1, 4, { ad_id: 'a b' }), /^ad_id: must be 1-128/],
    ['an ad_id of 129 chars', row(1, 4, { ad_id: 'x'.repeat(129) }), /^ad_id: /],
    ['a negative bid', row(1, 4, { bid_micros: -1 }), /^bid_micros: must be >= 0/],
    ['a fractional bid', row(1, 4, { bid_micros: 1.5 }), /^bid_micros: must be an integer/],
    ['a quality above 1', row(1, 4, { quality: 1.2 }), /^quality: must be in \[0, 1\]/],
    ['an unknown status', row(1, 4, { status: 'deleted' }), /^status: /],
    ['an empty embedding', row(1, 4, { embedding: [] }), /^embedding: must have 1\.\.4096/],
    ['a string in the embedding', row(1, 4, { embedding: [1, 'x'] }), /^embedding\[1\]: /],
    ['an empty targeting list', row(1, 4, { targeting: [] }), /^targeting: an empty targeting list/],
    ['an empty predicate', row(1, 4, { targeting: [{ geo: {} }] }), /^targeting\[0\]\.geo: a predicate needs/],
    ['a non-string value', row(1, 4, { targeting: [{ geo: { any_of: [1] } }] }), /^targeting\[0\]\.geo\.any_of\[0\]: /],
    ['an unknown predicate key', row(1, 4, { targeting: [{ geo: { all_of: ['x'] } }] }), /^targeting\[0\]\.geo: /],
    ['a bad start_time', row(1, 4, { start_time: '2026-13-01' }), /^start_time: must be an RFC 3339/],
    ['an end before the start', row(1, 4, { start_time: '2026-02-01T00:00:00Z', end_time: '2026-01-01T00:00:00Z' }), /^end_time: must be after/],
  ];
  for (const [what, input, want] of bad) {
    it(`when a row has ${what}, then the issue names the field`, () => {
      const found = issues(input);
      assert.ok(found.some((i) => want.test(i)), found.join(' | '));
    });
  }

  it('when the dimension differs from the catalog\'s, then the embedding is named', () => {
    assert.match(issues(row(1, 3), 4)[0], /^embedding: has 3 values, but the catalog's dimension is 4/);
  });

  it('when a value is too large to be exact, then it is refused', () => {
    assert.match(issues(row(1, 4, { bid_micros: 2 ** 60 }))[0], /^bid_micros: /);
  });

  it('when unknown fields are present, then they are ignored (other services may add fields)', () => {
    assert.deepEqual(issues(row(1, 4, { creative_url: 'https://x' })), []);
  });
});
