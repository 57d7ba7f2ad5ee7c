import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  FeatureLog,
  featureLogFiles,
  formatBatch,
  packRows,
  readFeatureLog,
  readFeatureLogRow,
  ROW_BYTES_ESTIMATE,
  type FeatureLogLine,
  type FeatureLogOptions,
  type FeatureLogRow,
} from '../../src/telemetry/feature-log';
import { tempDir } from '../fixtures/catalog';

function featureRow(request: number, ad: number, position: number): FeatureLogRow {
  return {
    time_ms: 1_735_787_045_678 + request,
    request_id: `r-${request}`,
    ad_id: `ad-${ad}`,
    model_version: 'v1/linear',
    pipeline: 'default',
    position,
    kept: position > 0,
    score: 1.25 / (ad + 1),
    features: {
      ann_similarity: 0.5 - ad / 100,
      ctr_prior_logit: -4.59511985013459,
      popularity_rate: 0.0099009900990099,
      quality: 0.75,
      source_ann: 1,
      source_targeting: ad % 2,
      source_popularity: 0,
    },
  };
}

/** The rows of one request: `kept` kept ones, then `cut` cut ones. */
function requestRows(request: number, kept: number, cut: number): FeatureLogRow[] {
  return [...Array.from({ length: kept }, (_, i) => featureRow(request, i, i + 1)), ...Array.from({ length: cut }, (_, i) => featureRow(request, kept + i, 0))];
}

async function readAll(dir: string): Promise<FeatureLogLine[]> {
  const out: FeatureLogLine[] = [];
  for await (const l of readFeatureLog(await featureLogFiles(dir))) out.push(l);
  return out;
}

describe('FeatureLog', () => {
  let dir: string;
  const counts = { written: 0, dropped: 0 };
  const warnings: string[] = [];
  const make = (options: Partial<FeatureLogOptions> = {}) =>
    new FeatureLog({
      dir: path.join(dir, 'log'),
      logger: { warn: (_obj, msg) => warnings.push(msg) },
      onCount: (result, n) => (counts[result] += n),
      ...options,
    });
  beforeEach(() => {
    dir = tempDir('flog');
    counts.written = 0;
    counts.dropped = 0;
    warnings.length = 0;
  });
  afterEach(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('when rows are recorded, then record() only hands them over (formatted and written on the writer thread), and they read back equal, in order', async () => {
    const log = make();
    const sent = [...requestRows(1, 3, 2), ...requestRows(2, 2, 0)];
    log.record(packRows(sent.slice(0, 5)));
    log.record(packRows(sent.slice(5)));
    log.record(packRows([]));
    assert.deepEqual(log.stats(), { written: 0, dropped: 0, files: 0, pendingRows: 7 });
    await log.close();
    assert.deepEqual(log.stats(), { written: 7, dropped: 0, files: 1, pendingRows: 0 });
    assert.deepEqual(counts, { written: 7, dropped: 0 });
    const names = fs.readdirSync(log.dir);
    assert.equal(names.length, 1);
    assert.match(names[0], new RegExp(`^features-\\d{8}T\\d{6}\\.\\d{3}Z-${process.pid}-\\d+\\.jsonl$`));
    const lines = await readAll(log.dir);
    assert.deepEqual(
      lines.map((l) => l.row),
      sent,
    );
    assert.deepEqual(lines.map((l) => l.line), [1, 2, 3, 4, 5, 6, 7]);
    const raw = JSON.parse(fs.readFileSync(path.join(log.dir, names[0]), 'utf8').split('\n')[0]) as Record<string, unknown>;
    assert.deepEqual(Object.keys(raw), ['time_ms', 'request_id', 'ad_id', 'model_version', 'pipeline', 'position', 'kept', 'score', 'features']);
  });

  it('when the queue cannot take a request while earlier ones wait, then the whole request is dropped and counted, never part of it', async () => {
    // Room for one request of 4 rows, not two.
    const log = make({ maxQueueBytes: 6 * ROW_BYTES_ESTIMATE });
    log.record(packRows(requestRows(1, 2, 2)));
    log.record(packRows(requestRows(2, 2, 2)));
    log.record(packRows(requestRows(3, 1, 0)));
    assert.deepEqual(log.stats(), { written: 0, dropped: 4, files: 0, pendingRows: 5 });
    await log.flush();
    assert.deepEqual(log.stats(), { written: 5, dropped: 4, files: 1, pendingRows: 0 });
    assert.deepEqual(counts, { written: 5, dropped: 4 });
    assert.deepEqual(warnings, ['feature log: the disk is not keeping up; rows dropped']);
    log.record(packRows(requestRows(4, 3, 0)));
    await log.close();
    assert.deepEqual(
      (await readAll(log.dir)).map((l) => l.row!.request_id),
      ['r-1', 'r-1', 'r-1', 'r-1', 'r-3', 'r-4', 'r-4', 'r-4'],
    );
  });

  it('when rows are recorded after close(), or cannot be captured, then they are dropped and counted', async () => {
    const log = make();
    await log.close();
    log.record(packRows(requestRows(1, 2, 1)));
    log.lost(5, new Error('boom'));
    assert.deepEqual(log.stats(), { written: 0, dropped: 8, files: 0, pendingRows: 0 });
    assert.deepEqual(counts, { written: 0, dropped: 8 });
    assert.ok(warnings.some((w) => /could not be captured/.test(w)));
  });

  it('when the writer thread dies, then what it held and every later row is dropped and counted, and flush() and close() still resolve', async () => {
    const log = make();
    log.record(packRows(requestRows(1, 2, 0)));
    await log.flush();
    await (log as unknown as { worker: { terminate(): Promise<number> } }).worker.terminate();
    log.record(packRows(requestRows(2, 3, 0)));
    await log.flush();
    await log.close();
    assert.deepEqual(log.stats(), { written: 2, dropped: 3, files: 1, pendingRows: 0 });
    assert.ok(warnings.some((w) => /writer thread failed/.test(w)));
  });

  it('when files grow past maxFileBytes, then they rotate between requests, and pruning keeps maxFiles feature files and leaves other files alone', async () => {
    const one = JSON.stringify(featureRow(0, 0, 1)).length + 1;
    const log = make({ maxFileBytes: 4 * one + 10, maxFiles: 2 });
    fs.writeFileSync(path.join(log.dir, 'requests-20000101T000000.000Z-1-000000.jsonl'), '{}\n');
    fs.writeFileSync(path.join(log.dir, 'features-20000101T000000.000Z-1-000000.jsonl'), '');
    for (let r = 0; r < 6; r++) {
      log.record(packRows(requestRows(r, 2, 0)));
      await log.flush();
    }
    await log.close();
    assert.deepEqual(log.stats(), { written: 12, dropped: 0, files: 3, pendingRows: 0 });
    const names = fs.readdirSync(log.dir).sort();
    assert.equal(names.filter((n) => n.startsWith('features-')).length, 2);
    assert.ok(names.includes('requests-20000101T000000.000Z-1-000000.jsonl'));
    assert.deepEqual(
      (await readAll(log.dir)).map((l) => l.row!.request_id),
      ['r-2', 'r-2', 'r-3', 'r-3', 'r-4', 'r-4', 'r-5', 'r-5'],
    );
  });
});

describe('formatBatch', () => {
  it('when a batch is formatted, then each line is exactly JSON.stringify of its row, odd strings and non-finite numbers included', () => {
    const rows = requestRows(1, 2, 1).map((r) => ({ ...r, request_id: 'r "1"\\\u2028é', model_version: 'v/\nx', pipeline: 'p\t' }));
    rows[2].features.popularity_rate = NaN;
    rows[1].score = -Infinity;
    rows[0].features.ann_similarity = 1e-300;
    rows[0].score = 123456789.123456789;
    const text = formatBatch(packRows(rows));
    assert.equal(text, rows.map((r) => JSON.stringify(r) + '\n').join(''));
    assert.equal(formatBatch(packRows([])), '');
  });
});

describe('readFeatureLog', () => {
  let dir: string;
  beforeEach(() => {
    dir = tempDir('flog-read');
  });
  afterEach(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('when a directory is read, then only its features-*.jsonl files are, in name order, up to the size they had when listed', async () => {
    const good = (r: number) => JSON.stringify(featureRow(r, 1, 1));
    fs.writeFileSync(path.join(dir, 'features-b.jsonl'), `${good(2)}\n`);
    fs.writeFileSync(path.join(dir, 'features-a.jsonl'), `${good(1)}\n\n`);
    fs.writeFileSync(path.join(dir, 'requests-a.jsonl'), '{"request":{}}\n');
    fs.writeFileSync(path.join(dir, 'features-c.txt'), 'nope\n');
    const files = await featureLogFiles(dir);
    assert.deepEqual(files.map((f) => path.basename(f.file)), ['features-a.jsonl', 'features-b.jsonl']);
    fs.appendFileSync(path.join(dir, 'features-b.jsonl'), `${good(3)}\n`);
    const ids: string[] = [];
    for await (const l of readFeatureLog(files)) ids.push(l.row!.request_id);
    assert.deepEqual(ids, ['r-1', 'r-2']);
    assert.deepEqual((await featureLogFiles(path.join(dir, 'features-a.jsonl'))).map((f) => f.file), [path.join(dir, 'features-a.jsonl')]);
  });

  it('when a row is malformed, then readFeatureLogRow names the field', () => {
    const base = featureRow(1, 1, 1) as unknown as Record<string, unknown>;
    const cases: [Record<string, unknown> | unknown, RegExp][] = [
      [[1], /^a line must be a JSON object/],
      [{ ...base, request_id: '' }, /^request_id: /],
      [{ ...base, ad_id: 7 }, /^ad_id: /],
      [{ ...base, time_ms: -1 }, /^time_ms: /],
      [{ ...base, position: 1.5 }, /^position: /],
      [{ ...base, kept: 'yes' }, /^kept: /],
      [{ ...base, position: 0 }, /^position: 0 with kept true/],
      [{ ...base, score: null }, /^score: /],
      [{ ...base, features: [] }, /^features: /],
      [{ ...base, features: { ...(base.features as object), quality: 'x' } }, /^features\.quality: /],
      [{ ...base, features: { ann_similarity: 1 } }, /^features\.ctr_prior_logit: /],
    ];
    for (const [obj, re] of cases) assert.match(readFeatureLogRow(obj).error ?? '', re, JSON.stringify(obj));
    const extra = readFeatureLogRow({ ...base, features: { ...(base.features as object), onnx_extra: 2, bad_extra: 'x' }, other: 1 });
    assert.equal(extra.error, undefined);
    assert.equal((extra.row!.features as Record<string, number>).onnx_extra, 2);
    assert.equal('bad_extra' in extra.row!.features, false);
  });
});
