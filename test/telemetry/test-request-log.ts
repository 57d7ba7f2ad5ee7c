import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { blankRetrieve, type DecodedRetrieve } from '../../src/grpc/codec';
import { readRequestLog, RequestLog, type RequestLogEntry, type RequestLogLine, type RequestLogOptions } from '../../src/telemetry/request-log';
import { tempDir } from '../fixtures/catalog';

/** Request `n`: every field set, all requests of the same serialised size. */
function request(n: number): DecodedRetrieve {
  const id = String(n).padStart(3, '0');
  return {
    ...blankRetrieve(),
    request_id: `r-${id}`,
    user_id: `u-${id}`,
    attributes: { country: { values: ['US'] }, platform: { values: ['ios', 'web'] } },
    user_embedding: Float32Array.from([0.25, -0.5, 0.125, 1]),
    num_results: 10,
    exclude_ad_ids: ['ad-1'],
    blocked_categories: ['gambling'],
  };
}

function entry(n: number): RequestLogEntry {
  return { timeMs: Date.UTC(2025, 0, 2, 3, 4, 5, 678) + n, pipeline: 'default', dataSeq: 100 + n, request: request(n), adIds: [`ad-${String(n).padStart(3, '0')}`, 'ad-x'] };
}

async function readAll(dir: string): Promise<RequestLogLine[]> {
  const out: RequestLogLine[] = [];
  for await (const l of readRequestLog(dir)) out.push(l);
  return out;
}

function logFiles(dir: string): string[] {
  return fs.readdirSync(dir).filter((n) => n.endsWith('.jsonl')).sort();
}

/** The size in bytes of one logged line of entry(n). */
async function lineBytes(): Promise<number> {
  const dir = tempDir('reqlog-size');
  try {
    const log = new RequestLog({ dir, sample: 1 });
    log.record(entry(0));
    await log.close();
    return fs.statSync(path.join(dir, logFiles(dir)[0])).size;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe('RequestLog', () => {
  let dir: string;
  const counts = { written: 0, dropped: 0 };
  const warnings: string[] = [];
  const make = (options: Partial<RequestLogOptions>) =>
    new RequestLog({
      dir: path.join(dir, 'log'),
      sample: 1,
      logger: { warn: (_obj, msg) => warnings.push(msg) },
      onCount: (result, n) => (counts[result] += n),
      ...options,
    });
  beforeEach(() => {
    dir = tempDir('reqlog');
    counts.written = 0;
    counts.dropped = 0;
    warnings.length = 0;
  });
  afterEach(() => {
    fs.chmodSync(dir, 0o700);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('when the sample is 0, then nothing is written and nothing counted', async () => {
    const log = make({ sample: 0 });
    for (let i = 0; i < 200; i++) log.record(entry(i));
    await log.close();
    assert.deepEqual(log.stats(), { written: 0, dropped: 0, files: 0, queuedBytes: 0 });
    assert.deepEqual(logFiles(log.dir), []);
    assert.deepEqual(counts, { written: 0, dropped: 0 });
  });

  it('when the sample is 1, then every request is written and reads back equal, in order', async () => {
    const log = make({});
    const sent: RequestLogEntry[] = [];
    for (let i = 0; i < 25; i++) {
      const e = entry(i);
      if (i === 3) e.request = { ...blankRetrieve() };
      if (i === 4) e.adIds = [];
      sent.push(e);
      log.record(e);
    }
    await log.close();
    assert.deepEqual(log.stats(), { written: 25, dropped: 0, files: 1, queuedBytes: 0 });
    assert.deepEqual(counts, { written: 25, dropped: 0 });
    const names = logFiles(log.dir);
    assert.equal(names.length, 1);
    assert.match(names[0], new RegExp(`^requests-\\d{8}T\\d{6}\\.\\d{3}Z-${process.pid}-\\d+\\.jsonl$`));
    const lines = await readAll(log.dir);
    assert.equal(lines.length, 25);
    lines.forEach((l, i) => {
      assert.equal(l.error, undefined, l.error);
      assert.equal(l.file, path.join(log.dir, names[0]));
      assert.equal(l.line, i + 1);
      assert.deepEqual(l.request, sent[i].request);
      assert.deepEqual(l.entry, { time: new Date(sent[i].timeMs).toISOString(), pipeline: 'default', data_seq: sent[i].dataSeq, ad_ids: sent[i].adIds });
    });
    assert.equal(lines[0].entry?.time, '2025-01-02T03:04:05.678Z');
    const raw = JSON.parse(fs.readFileSync(path.join(log.dir, names[0]), 'utf8').split('\n')[0]) as Record<string, unknown>;
    assert.deepEqual(Object.keys(raw), ['time', 'pipeline', 'data_seq', 'request', 'ad_ids']);
  });

  it('when lines would take a file past maxFileBytes, then it rotates, and only the newest maxFiles files are kept', async () => {
    const size = await lineBytes();
    const log = make({ maxFileBytes: 3 * size + 1, maxFiles: 3 });
    fs.writeFileSync(path.join(log.dir, 'requests-20000101T000000.000Z-1-000000.jsonl'), '{}\n');
    fs.writeFileSync(path.join(log.dir, 'keep-me.txt'), 'not a log\n');
    for (let i = 0; i < 20; i++) log.record(entry(i));
    await log.close();
    // 20 lines of 3 per file: 7 files; the last three hold lines 13..20.
    assert.deepEqual(log.stats(), { written: 20, dropped: 0, files: 7, queuedBytes: 0 });
    const names = logFiles(log.dir);
    assert.equal(names.length, 3);
    for (const n of names) assert.ok(fs.statSync(path.join(log.dir, n)).size <= 3 * size + 1, n);
    assert.ok(fs.existsSync(path.join(log.dir, 'keep-me.txt')));
    const ids = (await readAll(log.dir)).map((l) => l.request?.request_id);
    assert.deepEqual(ids, Array.from({ length: 8 }, (_, k) => request(12 + k).request_id));
  });

  it('when the queue is over maxQueueBytes while a write is pending, then new lines are dropped and counted', async () => {
    const size = await lineBytes();
    const log = make({ maxQueueBytes: size + Math.floor(size / 2) });
    for (let i = 0; i < 5; i++) log.record(entry(i));
    assert.equal(log.stats().dropped, 4);
    assert.equal(log.stats().queuedBytes, size);
    await log.close();
    assert.deepEqual(log.stats(), { written: 1, dropped: 4, files: 1, queuedBytes: 0 });
    assert.deepEqual(counts, { written: 1, dropped: 4 });
    assert.equal(warnings.length, 1);
    assert.deepEqual((await readAll(log.dir)).map((l) => l.request?.request_id), ['r-000']);
  });

  it('when the directory is removed and a file takes its place, then lines are dropped and counted, record() never throws, and writing resumes once it can', async () => {
    const log = make({});
    log.record(entry(0));
    await log.flush();
    assert.equal(log.stats().written, 1);
    fs.rmSync(log.dir, { recursive: true });
    fs.writeFileSync(log.dir, 'in the way\n');
    for (let i = 1; i <= 3; i++) assert.doesNotThrow(() => log.record(entry(i)));
    await log.flush();
    for (let i = 4; i <= 5; i++) assert.doesNotThrow(() => log.record(entry(i)));
    await log.flush();
    assert.equal(log.stats().written, 1);
    assert.equal(log.stats().dropped, 5);
    assert.equal(log.stats().queuedBytes, 0);
    assert.equal(warnings.length, 1, 'one warning a minute at most');
    fs.rmSync(log.dir);
    log.record(entry(6));
    await log.close();
    assert.deepEqual(log.stats(), { written: 2, dropped: 5, files: 2, queuedBytes: 0 });
    assert.deepEqual(counts, { written: 2, dropped: 5 });
    assert.deepEqual((await readAll(log.dir)).map((l) => l.request?.request_id), ['r-006']);
  });

  it('when the directory cannot be written, then every line is dropped and counted, and nothing throws', async function () {
    if (process.getuid?.() === 0) this.skip(); // root writes anywhere
    const log = make({});
    fs.chmodSync(log.dir, 0o500);
    try {
      for (let i = 0; i < 4; i++) assert.doesNotThrow(() => log.record(entry(i)));
      await log.close();
    } finally {
      fs.chmodSync(log.dir, 0o700);
    }
    assert.deepEqual(log.stats(), { written: 0, dropped: 4, files: 0, queuedBytes: 0 });
  });

  it('when the directory is under a regular file, then the constructor says so', () => {
    const file = path.join(dir, 'plain');
    fs.writeFileSync(file, '');
    assert.throws(() => new RequestLog({ dir: path.join(file, 'log'), sample: 1 }), /ENOTDIR/);
  });

  it('when the sample is outside [0, 1], then the constructor refuses it', () => {
    for (const sample of [-0.1, 1.5, NaN]) assert.throws(() => new RequestLog({ dir: path.join(dir, 'log'), sample }), /sample/);
  });

  it('when close() is called right after recording, then every queued line is on disk, and later lines are dropped', async () => {
    const log = make({});
    for (let i = 0; i < 50; i++) log.record(entry(i));
    assert.ok(log.stats().queuedBytes > 0);
    await log.close();
    assert.deepEqual(log.stats(), { written: 50, dropped: 0, files: 1, queuedBytes: 0 });
    assert.equal((await readAll(log.dir)).length, 50);
    log.record(entry(50));
    assert.equal(log.stats().dropped, 1);
    await log.close();
  });

  it('when a request cannot be serialised, then record() drops and counts it instead of throwing', async () => {
    const log = make({});
    assert.doesNotThrow(() => log.record({ ...entry(0), timeMs: NaN }));
    await log.close();
    assert.deepEqual(log.stats(), { written: 0, dropped: 1, files: 0, queuedBytes: 0 });
  });
});

describe('readRequestLog', () => {
  let dir: string;
  beforeEach(() => {
    dir = tempDir('reqlog-read');
  });
  afterEach(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('when files hold bad lines, then each comes back as an error with its 1-based line (an unreadable file as one error), blank lines skipped, files in name order', async () => {
    const good = JSON.stringify({ time: 't', pipeline: 'p', data_seq: 3, request: { request_id: 'ok', userEmbedding: [1, 2] }, ad_ids: ['a'] });
    fs.writeFileSync(path.join(dir, 'b.jsonl'), [good, '', '{not json', JSON.stringify({ request: { user_embedding: [1, 'x'] } }), JSON.stringify({ time: 1 })].join('\n') + '\n');
    fs.writeFileSync(path.join(dir, 'a.jsonl'), `${good}\r\n\r\n   \n${JSON.stringify({ request: {}, ad_ids: 'a' })}\n`);
    fs.writeFileSync(path.join(dir, 'ignored.txt'), 'nope\n');
    fs.mkdirSync(path.join(dir, 'c.jsonl'));
    const lines = await (async () => {
      const out: RequestLogLine[] = [];
      for await (const l of readRequestLog(dir)) out.push(l);
      return out;
    })();
    const brief = lines.map((l) => [path.basename(l.file), l.line, l.error ?? l.request?.request_id]);
    assert.equal(brief.length, 7);
    assert.equal(brief[6][0], 'c.jsonl');
    assert.match(String(brief[6][2]), /^read failed: .*EISDIR/);
    assert.deepEqual(brief[0], ['a.jsonl', 1, 'ok']);
    assert.deepEqual(brief[1], ['a.jsonl', 4, 'ad_ids: must be a list of strings']);
    assert.deepEqual(brief[2], ['b.jsonl', 1, 'ok']);
    assert.equal(brief[3][1], 3);
    assert.match(String(brief[3][2]), /^bad JSON/);
    assert.deepEqual(brief[4], ['b.jsonl', 4, 'request.user_embedding[1]: must be a finite number (float32)']);
    assert.deepEqual(brief[5], ['b.jsonl', 5, 'request: missing']);
    assert.deepEqual(lines[0].entry, { time: 't', pipeline: 'p', data_seq: 3, ad_ids: ['a'] });
    assert.deepEqual(Array.from(lines[0].request!.user_embedding), [1, 2]);
  });
});
