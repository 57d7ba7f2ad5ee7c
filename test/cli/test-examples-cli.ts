import { strict as assert } from 'node:assert';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { FeatureLogRow } from '../../src/telemetry/feature-log';
import { stringify } from 'yaml';
import { row, tempDir } from '../fixtures/catalog';
import { ingestRows, retrievalClient, sleep, type RetrieveResponseMsg } from '../fixtures/e2e-server';

const CLI = path.resolve(__dirname, '..', '..', 'src', 'cli', 'main.js');
const funnel = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });

function logRow(requestId: string, adId: string, position: number): FeatureLogRow {
  return {
    time_ms: 1_735_787_045_678,
    request_id: requestId,
    ad_id: adId,
    model_version: '2026-01-01.1/linear',
    pipeline: 'default',
    position,
    kept: position > 0,
    score: 3.5 - position / 10,
    features: { ann_similarity: 0.42, ctr_prior_logit: -4.5, popularity_rate: 0.01, quality: 0.5, source_ann: 1, source_targeting: 1, source_popularity: 0 },
  };
}

const lines = (xs: unknown[]) => xs.map((x) => (typeof x === 'string' ? x : JSON.stringify(x))).join('\n') + '\n';

describe('funnel examples', () => {
  let tmp: string;
  let logDir: string;
  beforeEach(() => {
    tmp = tempDir('examples');
    logDir = path.join(tmp, 'features');
    fs.mkdirSync(logDir);
    fs.writeFileSync(path.join(logDir, 'features-20250101T000000.000Z-1-000000.jsonl'), lines([logRow('r1', 'a', 1), logRow('r1', 'b', 2), logRow('r1', 'c', 0)]));
    fs.writeFileSync(path.join(logDir, 'features-20250101T000001.000Z-1-000001.jsonl'), lines([logRow('r2', 'a', 1), logRow('r2', 'b', 2)]));
  });
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('when the log and events are good, then it writes one labelled example per shown row, in log order, says what it left out, and exits 0', () => {
    const events = path.join(tmp, 'events.jsonl');
    fs.writeFileSync(
      events,
      lines([
        { ad_id: 'a', type: 'IMPRESSION', timestamp_ms: 1, request_id: 'r1' },
        { ad_id: 'a', type: 'CLICK', timestamp_ms: 2, request_id: 'r1' },
        { ad_id: 'a', type: 'CLICK', timestamp_ms: 2, request_id: 'r1' },
        { ad_id: 'b', type: 'IMPRESSION', timestamp_ms: 1, request_id: 'r1' },
        { ad_id: 'a', type: 'CLICK', timestamp_ms: 3, request_id: 'r2' },
        { ad_id: 'b', type: 'IMPRESSION', timestamp_ms: 1, request_id: 'r2' },
        { ad_id: 'a', type: 'IMPRESSION', timestamp_ms: 1, request_id: 'not-sampled' },
        { ad_id: 'a', type: 'IMPRESSION', timestamp_ms: 1 },
      ]),
    );
    const out = path.join(tmp, 'out', 'examples.jsonl');
    const r = funnel('examples', '--log', logDir, '--events', events, '--out', out);
    assert.equal(r.status, 0, r.stderr);
    const got = fs
      .readFileSync(out, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as FeatureLogRow & { impressions: number; clicks: number; label: number });
    assert.deepEqual(
      got.map((x) => [x.request_id, x.ad_id, x.impressions, x.clicks, x.label]),
      [
        ['r1', 'a', 1, 1, 1],
        ['r1', 'b', 1, 0, 0],
        ['r2', 'b', 1, 0, 0],
      ],
    );
    assert.deepEqual(got[0], { ...logRow('r1', 'a', 1), impressions: 1, clicks: 1, label: 1 });
    assert.deepEqual(Object.keys(got[0]), ['time_ms', 'request_id', 'ad_id', 'model_version', 'pipeline', 'position', 'kept', 'score', 'features', 'impressions', 'clicks', 'label']);
    assert.match(r.stderr, /3 examples \(1 clicked, label 1\) from 5 feature-log rows/);
    assert.match(r.stderr, /1 rows never shown \(no impression\); 1 rows clicked without an impression; 0 rows sharing/);
    assert.match(r.stderr, /8 read, 5 joined; 1 of requests not in the log; 0 of ads not logged for their request; 1 without request_id; 1 duplicates counted once/);
    assert.deepEqual(fs.readdirSync(path.dirname(out)), ['examples.jsonl'], 'no temporary file left');
  });

  it('when lines are bad, then each is named FILE:LINE: reason, skipped and counted, the rest is still written, and it exits 1', () => {
    const bad = path.join(logDir, 'features-20250101T000002.000Z-1-000002.jsonl');
    fs.writeFileSync(bad, lines(['{nope', { ...logRow('r3', 'a', 1), score: 'high' }, logRow('r3', 'b', 1)]));
    const events = path.join(tmp, 'events.jsonl');
    fs.writeFileSync(events, lines([{ ad_id: 'b', type: 'IMPRESSION', request_id: 'r3' }, { ad_id: 'b', type: 'VIEW', request_id: 'r3' }, '', '[]']));
    const r = funnel('examples', '--log', logDir, '--events', events, '--out', '-');
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`${bad}:1: bad JSON`));
    assert.match(r.stderr, new RegExp(`${bad}:2: score: must be a finite number`));
    assert.match(r.stderr, new RegExp(`${events}:2: type: must be IMPRESSION or CLICK`));
    assert.match(r.stderr, new RegExp(`${events}:4: a line must be a JSON object`));
    assert.match(r.stderr, /bad lines skipped: 2 in the feature log, 2 in the events file/);
    assert.deepEqual(
      r.stdout
        .trim()
        .split('\n')
        .map((l) => (JSON.parse(l) as FeatureLogRow).ad_id),
      ['b'],
    );
  });

  it('when usage is wrong, then it exits 2; when an input cannot be read, then 3, and no output file is left', () => {
    const events = path.join(tmp, 'events.jsonl');
    fs.writeFileSync(events, '');
    assert.equal(funnel('examples', '--log', logDir, '--events', events).status, 2);
    assert.equal(funnel('examples', '--log', logDir, '--events', events, '--out', events).status, 2);
    const out = path.join(tmp, 'ex.jsonl');
    const missingLog = funnel('examples', '--log', path.join(tmp, 'nope'), '--events', events, '--out', out);
    assert.equal(missingLog.status, 3);
    assert.match(missingLog.stderr, /--log .*nope: ENOENT/);
    const emptyDir = path.join(tmp, 'empty');
    fs.mkdirSync(emptyDir);
    assert.match(funnel('examples', '--log', emptyDir, '--events', events, '--out', out).stderr, /no feature-log files/);
    const missingEvents = funnel('examples', '--log', logDir, '--events', path.join(tmp, 'none.jsonl'), '--out', out);
    assert.equal(missingEvents.status, 3);
    assert.match(missingEvents.stderr, /--events .*none\.jsonl: ENOENT/);
    const outIsDir = path.join(tmp, 'adir');
    fs.mkdirSync(outIsDir);
    const r = funnel('examples', '--log', logDir, '--events', events, '--out', outIsDir);
    assert.equal(r.status, 3, r.stderr);
    assert.ok(!fs.existsSync(out));
    assert.deepEqual(fs.readdirSync(tmp).filter((n) => n.includes('.tmp-')), []);
  });
});

describe('funnel serve --feature-log, then funnel examples', () => {
  let dir: string;
  let child: ChildProcess | undefined;
  before(() => {
    dir = tempDir('flog-cli');
  });
  after(async () => {
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child!.once('exit', resolve));
      child.kill('SIGKILL');
      await exited;
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('when --feature-log and --request-log name one directory, then serve exits 2', () => {
    const r = funnel('serve', '--data', path.join(dir, 'none'), '--feature-log', path.join(dir, 'logs'), '--request-log', path.join(dir, 'logs', '.'), '--workers', '1');
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--feature-log and --request-log need different directories/);
  });

  it('when a server logs features and events name what it showed, then funnel examples turns the shown ads into labelled examples', async () => {
    const data = await ingestRows(dir, Array.from({ length: 20 }, (_, n) => row(n, 4)));
    const config = path.join(dir, 'funnel.yaml');
    fs.writeFileSync(config, stringify({ version: 'cli-1', feature_log: { sample: 1, cut_sample: 0 }, limits: { shed_event_loop_lag_ms: 0 }, pipelines: { default: { stages: { EarlyRanker: { keep: 6 } } } } }));
    const logDir = path.join(dir, 'features');
    const proc = spawn(process.execPath, [CLI, 'serve', '--data', data, '--config', config, '--port', '0', '--metrics-port', '0', '--workers', '1', '--feature-log', logDir], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, OTEL_TRACES_EXPORTER: 'none' },
    });
    child = proc;
    let stdout = '';
    let stderr = '';
    proc.stdout!.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    proc.stderr!.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    const exit = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
    for (let i = 0; i < 1000 && !/funnel serving on /.test(stdout) && proc.exitCode === null; i++) await sleep(10);
    const m = /funnel serving on ([\d.]+:\d+) /.exec(stdout);
    assert.ok(m, `stdout: ${stdout}\nstderr: ${stderr}`);
    const client = retrievalClient(m[1]);
    const answers: RetrieveResponseMsg[] = [];
    try {
      answers.push(await client.retrieve({ request_id: 'cli-r1', user_embedding: [0.1, 0.2, 0.3, 0.4], num_results: 3 }));
      answers.push(await client.retrieve({ user_embedding: [0.4, -0.2, 0.1, 0.3], num_results: 3 }));
    } finally {
      client.close();
    }
    proc.kill('SIGTERM');
    assert.equal(await exit, 0, stderr);
    assert.equal(answers[0].request_id, 'cli-r1');
    assert.ok(answers[1].request_id);

    // Every returned ad was shown; the first of each answer was clicked.
    const events = answers.flatMap((a) =>
      a.candidates.flatMap((c, i) => [
        { ad_id: c.ad_id, type: 'IMPRESSION', timestamp_ms: 1000 + i, request_id: a.request_id },
        ...(i === 0 ? [{ ad_id: c.ad_id, type: 'CLICK', timestamp_ms: 2000, request_id: a.request_id }] : []),
      ]),
    );
    const eventsFile = path.join(dir, 'events.jsonl');
    fs.writeFileSync(eventsFile, lines(events));
    const out = path.join(dir, 'examples.jsonl');
    const r = funnel('examples', '--log', logDir, '--events', eventsFile, '--out', out);
    assert.equal(r.status, 0, r.stderr);
    const got = fs
      .readFileSync(out, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as FeatureLogRow & { label: number });
    const shown = answers.flatMap((a) => a.candidates.map((c, i) => `${a.request_id}/${c.ad_id}/${i === 0 ? 1 : 0}`)).sort();
    assert.deepEqual(got.map((x) => `${x.request_id}/${x.ad_id}/${x.label}`).sort(), shown);
    assert.ok(got.every((x) => x.kept && x.model_version === 'cli-1/linear'));
    assert.match(r.stderr, new RegExp(`${shown.length} examples \\(2 clicked, label 1\\) from 12 feature-log rows`));
    assert.match(r.stderr, /6 rows never shown/);
  });
});
