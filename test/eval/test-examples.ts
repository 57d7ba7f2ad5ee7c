import { strict as assert } from 'node:assert';
import { ExampleJoin, readEventLine, type ExampleEvent } from '../../src/eval/examples';
import type { FeatureLogRow } from '../../src/telemetry/feature-log';

function logRow(requestId: string, adId: string, position = 1): FeatureLogRow {
  return {
    time_ms: 1000,
    request_id: requestId,
    ad_id: adId,
    model_version: 'v/linear',
    pipeline: 'default',
    position,
    kept: position > 0,
    score: 2.5,
    features: { ann_similarity: 0.1, ctr_prior_logit: -3, popularity_rate: 0, quality: 0.5, source_ann: 1, source_targeting: 0, source_popularity: 0 },
  };
}

function ev(requestId: string, adId: string, type: 'IMPRESSION' | 'CLICK', ts = 0): ExampleEvent {
  return { request_id: requestId, ad_id: adId, type, timestamp_ms: ts };
}

/** Runs the three passes over `rows` and `events`; the examples as [request_id, ad_id, impressions, clicks, label]. */
function join(rows: FeatureLogRow[], events: ExampleEvent[]) {
  const j = new ExampleJoin();
  for (const r of rows) j.addRow(r);
  for (const e of events) j.addEvent(e);
  const examples = rows.map((r) => j.example(r)).filter((x) => x !== null);
  return { examples: examples.map((x) => [x.request_id, x.ad_id, x.impressions, x.clicks, x.label]), all: examples, counts: j.counts() };
}

describe('ExampleJoin', () => {
  it('when a logged row was shown, then it is an example labelled 1 if clicked, else 0, in log order, carrying the row', () => {
    const rows = [logRow('r1', 'a'), logRow('r1', 'b', 2), logRow('r1', 'c', 0), logRow('r2', 'a')];
    const { examples, all, counts } = join(rows, [
      ev('r1', 'a', 'IMPRESSION', 10),
      ev('r1', 'b', 'IMPRESSION', 10),
      ev('r1', 'b', 'CLICK', 12),
      ev('r2', 'a', 'IMPRESSION', 20),
      ev('r2', 'a', 'IMPRESSION', 21),
    ]);
    assert.deepEqual(examples, [
      ['r1', 'a', 1, 0, 0],
      ['r1', 'b', 1, 1, 1],
      ['r2', 'a', 2, 0, 0],
    ]);
    assert.deepEqual(all[1], { ...rows[1], impressions: 1, clicks: 1, label: 1 });
    assert.deepEqual(Object.keys(all[1]), [...Object.keys(rows[1]), 'impressions', 'clicks', 'label']);
    assert.equal(counts.rows, 4);
    assert.equal(counts.examples, 3);
    assert.equal(counts.positives, 1);
    assert.equal(counts.notShown, 1, 'r1/c: logged, never shown');
    assert.equal(counts.eventsJoined, 5);
  });

  it('when an event is delivered twice, then it counts once; events without a timestamp are never taken for duplicates', () => {
    const { examples, counts } = join(
      [logRow('r1', 'a'), logRow('r1', 'b')],
      [
        ev('r1', 'a', 'IMPRESSION', 10),
        ev('r1', 'a', 'IMPRESSION', 10),
        ev('r1', 'a', 'CLICK', 10),
        ev('r1', 'a', 'CLICK', 10),
        ev('r1', 'b', 'IMPRESSION'),
        ev('r1', 'b', 'IMPRESSION'),
      ],
    );
    assert.deepEqual(examples, [
      ['r1', 'a', 1, 1, 1],
      ['r1', 'b', 2, 0, 0],
    ]);
    assert.equal(counts.duplicateEvents, 2);
    assert.equal(counts.eventsJoined, 4);
  });

  it('when the log holds a (request_id, ad_id) twice, then every such row is left out and counted (the events cannot say which Retrieve showed it)', () => {
    const { examples, counts } = join(
      [logRow('r1', 'a'), logRow('r1', 'a', 3), logRow('r1', 'b')],
      [ev('r1', 'a', 'IMPRESSION', 1), ev('r1', 'a', 'CLICK', 2), ev('r1', 'b', 'IMPRESSION', 1)],
    );
    assert.deepEqual(examples, [['r1', 'b', 1, 0, 0]]);
    assert.equal(counts.duplicateRows, 2);
    assert.equal(counts.examples, 1);
  });

  it('when a row has clicks but no impression, then it is left out and counted apart from rows never shown', () => {
    const { examples, counts } = join([logRow('r1', 'a'), logRow('r1', 'b'), logRow('r1', 'c')], [ev('r1', 'a', 'CLICK', 5), ev('r1', 'a', 'CLICK', 6), ev('r1', 'c', 'IMPRESSION', 5)]);
    assert.deepEqual(examples, [['r1', 'c', 1, 0, 0]]);
    assert.equal(counts.clickedNotShown, 1);
    assert.equal(counts.notShown, 1);
  });

  it('when events name request ids the log does not hold, ads it did not log for a request, or no request id, then each kind is counted and none joins', () => {
    const { examples, counts } = join(
      [logRow('r1', 'a')],
      [
        ev('unknown', 'a', 'IMPRESSION', 1),
        ev('unknown', 'a', 'CLICK', 2),
        ev('r1', 'zz', 'IMPRESSION', 1),
        ev('', 'a', 'IMPRESSION', 1),
        ev('r1', 'a', 'IMPRESSION', 3),
      ],
    );
    assert.deepEqual(examples, [['r1', 'a', 1, 0, 0]]);
    assert.equal(counts.events, 5);
    assert.equal(counts.eventsUnknownRequest, 2);
    assert.equal(counts.eventsUnloggedAd, 1);
    assert.equal(counts.eventsNoRequestId, 1);
    assert.equal(counts.eventsJoined, 1);
  });

  it('when request ids and ad ids would run together, then the keys still tell them apart', () => {
    const { examples } = join([logRow('r1', 'ab'), logRow('r1a', 'b')], [ev('r1', 'ab', 'IMPRESSION', 1), ev('r1', 'ab', 'CLICK', 2), ev('r1a', 'b', 'IMPRESSION', 1)]);
    assert.deepEqual(examples, [
      ['r1', 'ab', 1, 1, 1],
      ['r1a', 'b', 1, 0, 0],
    ]);
  });
});

describe('readEventLine', () => {
  it('when a line is a RecordEvents-style event, then proto or lowerCamelCase names, enum names or numbers and string int64s are read', () => {
    assert.deepEqual(readEventLine({ ad_id: 'a', type: 'CLICK', timestamp_ms: 12, request_id: 'r' }).event, { ad_id: 'a', type: 'CLICK', timestamp_ms: 12, request_id: 'r' });
    assert.deepEqual(readEventLine({ adId: 'a', type: 1, timestampMs: '1735787045678', requestId: 'r', attributes: {} }).event, {
      ad_id: 'a',
      type: 'IMPRESSION',
      timestamp_ms: 1735787045678,
      request_id: 'r',
    });
    assert.deepEqual(readEventLine({ ad_id: 'a', type: 'IMPRESSION' }).event, { ad_id: 'a', type: 'IMPRESSION', timestamp_ms: 0, request_id: '' });
  });

  it('when a line is malformed, then the reason names the field', () => {
    const cases: [unknown, RegExp][] = [
      ['x', /^a line must be a JSON object/],
      [{ type: 'CLICK' }, /^ad_id: /],
      [{ ad_id: 'a', type: 'VIEW' }, /^type: must be IMPRESSION or CLICK, got "VIEW"/],
      [{ ad_id: 'a', type: 'CLICK', timestamp_ms: -5 }, /^timestamp_ms: /],
      [{ ad_id: 'a', type: 'CLICK', timestamp_ms: '12x' }, /^timestamp_ms: /],
      [{ ad_id: 'a', type: 'CLICK', request_id: 4 }, /^request_id: /],
    ];
    for (const [obj, re] of cases) assert.match(readEventLine(obj).error ?? '', re, JSON.stringify(obj));
  });
});
