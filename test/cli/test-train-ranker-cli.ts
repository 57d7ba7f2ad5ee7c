/** `funnel train-ranker`, run as the command line: outputs, the written config, bad lines and exit codes. */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parse } from 'yaml';
import { defaultConfig, loadConfigFile, parseConfigObject } from '../../src/config/load';
import { FEATURE_NAMES } from '../../src/eval/train-ranker';
import { tempDir } from '../fixtures/catalog';
import { exampleRows, TRUE_WEIGHTS } from '../fixtures/examples';

const CLI = path.resolve(__dirname, '..', '..', 'src', 'cli', 'main.js');
const funnel = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, OTEL_TRACES_EXPORTER: 'none' } });

function writeLines(file: string, lines: Array<Record<string, unknown> | string>): string {
  fs.writeFileSync(file, lines.map((l) => (typeof l === 'string' ? l : JSON.stringify(l))).join('\n') + '\n');
  return file;
}

type Raw = Record<string, unknown>;
const isObject = (v: unknown): v is Raw => v !== null && typeof v === 'object' && !Array.isArray(v);
function merge(base: unknown, over: unknown): unknown {
  if (!isObject(base) || !isObject(over)) return over;
  const out: Raw = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = k in out ? merge(out[k], v) : v;
  return out;
}

describe('funnel train-ranker', () => {
  let tmp: string;
  let clean: string;
  before(() => {
    tmp = tempDir('train-ranker');
    clean = writeLines(path.join(tmp, 'examples.jsonl'), exampleRows(400, 10));
  });
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('when every line is good, then it exits 0, prints one JSON object with --json, and writes a config holding exactly those weights', () => {
    const out = path.join(tmp, 'weights.yaml');
    const r = funnel('train-ranker', '--examples', clean, '--out', out, '--json');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr, '');
    const lines = r.stdout.trimEnd().split('\n');
    assert.equal(lines.length, 1);
    const j = JSON.parse(lines[0]);
    assert.deepEqual(j.examples, { file: clean, lines: 4000, used: 4000, bad: 0 });
    assert.equal(j.train.rows + j.holdout.rows, 4000);
    assert.equal(j.train.requests + j.holdout.requests, 400);
    assert.equal(j.train.rows, j.train.requests * 10, 'the rows of a request stay together');
    assert.ok(j.holdout.rows > 400 && j.holdout.rows < 1200, `held out ${j.holdout.rows}`);
    assert.equal(j.fit.method, 'irls');
    assert.equal(j.fit.l2, 1);
    assert.equal(j.fit.converged, true);
    assert.deepEqual(j.fit.features, [...FEATURE_NAMES]);
    for (const split of [j.train, j.holdout]) {
      assert.ok(split.log_loss > 0 && split.log_loss < 0.3, `log_loss ${split.log_loss}`);
      assert.ok(split.auc > 0.7 && split.auc <= 1, `auc ${split.auc}`);
      assert.equal(split.calibration.length, 10);
      assert.equal(split.calibration.reduce((s: number, b: { count: number }) => s + b.count, 0), split.rows);
      for (const b of split.calibration) assert.deepEqual(Object.keys(b), ['lo', 'hi', 'count', 'mean_pctr', 'observed_rate']);
    }
    assert.deepEqual(Object.keys(j.weights), Object.keys(TRUE_WEIGHTS));
    assert.ok(Math.abs(j.weights.ann_similarity - TRUE_WEIGHTS.ann_similarity) < 0.5, `ann_similarity ${j.weights.ann_similarity}`);
    assert.equal(j.pipeline, 'default');
    assert.equal(j.out, out);

    const config = loadConfigFile(out);
    assert.deepEqual(config.pipelines.default.stages.EarlyRanker.weights, j.weights);
    const { EarlyRanker: _ranker, ...otherStages } = config.pipelines.default.stages;
    const { EarlyRanker: _defaultRanker, ...defaultStages } = defaultConfig().pipelines.default.stages;
    assert.deepEqual(otherStages, defaultStages, 'nothing but the weights differs from the defaults');
    assert.deepEqual(Object.keys(parse(fs.readFileSync(out, 'utf8'))), ['pipelines']);
    const v = funnel('config', 'validate', out);
    assert.equal(v.status, 0, v.stderr);
    assert.equal(fs.readdirSync(tmp).filter((f) => f.endsWith('.tmp')).length, 0);
  });

  it('when run twice with the same seed, then the output is identical; another seed holds out other requests', () => {
    const out = path.join(tmp, 'seeded.yaml');
    const a = funnel('train-ranker', '--examples', clean, '--out', out, '--json', '--seed', '7');
    const fileA = fs.readFileSync(out, 'utf8');
    const b = funnel('train-ranker', '--examples', clean, '--out', out, '--json', '--seed', '7');
    assert.equal(a.status, 0, a.stderr);
    assert.equal(a.stdout, b.stdout);
    assert.equal(fs.readFileSync(out, 'utf8'), fileA);
    const c = funnel('train-ranker', '--examples', clean, '--out', out, '--json', '--seed', '8');
    assert.notDeepEqual(JSON.parse(c.stdout).weights, JSON.parse(a.stdout).weights);
  });

  it('when --features and --pipeline are given, then the other weights are written as 0 under that pipeline, and the file is a valid config on its own and merged into another', () => {
    const out = path.join(tmp, 'explore.yaml');
    const r = funnel('train-ranker', '--examples', clean, '--out', out, '--json', '--features', 'quality,ann_similarity', '--pipeline', 'explore', '--l2', '3');
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.deepEqual(j.fit.features, ['ann_similarity', 'quality']);
    assert.equal(j.fit.l2, 3);
    for (const f of FEATURE_NAMES) if (f !== 'quality' && f !== 'ann_similarity') assert.equal(j.weights[f], 0, f);
    assert.deepEqual(Object.keys(j.std_errors).sort(), ['ann_similarity', 'bias', 'quality']);

    const config = loadConfigFile(out);
    assert.deepEqual(config.pipelines.explore.stages.EarlyRanker.weights, j.weights);
    assert.deepEqual(config.pipelines.default, defaultConfig().pipelines.default);
    assert.equal(funnel('config', 'validate', out).status, 0);

    const base = {
      version: 'prod-3',
      pipelines: { default: { stages: { Ann: { k: 42 } } }, explore: { inherits: 'default', stages: { Diversifier: { mmr_lambda: 0.4 } } } },
    };
    const merged = parseConfigObject(merge(base, parse(fs.readFileSync(out, 'utf8'))));
    assert.equal(merged.version, 'prod-3');
    assert.deepEqual(merged.pipelines.explore.stages.EarlyRanker.weights, j.weights);
    assert.equal(merged.pipelines.explore.stages.Ann.k, 42);
    assert.equal(merged.pipelines.explore.stages.Diversifier.mmr_lambda, 0.4);
    assert.deepEqual(merged.pipelines.default.stages.EarlyRanker, defaultConfig().pipelines.default.stages.EarlyRanker);
  });

  it('when lines are bad, then each is named as FILE:LINE: reason, skipped and counted, the fit still runs, and it exits 1', () => {
    const rows = exampleRows(100, 5, 3);
    const file = writeLines(path.join(tmp, 'bad.jsonl'), [
      rows[0],
      '{"request_id": ',
      rows[1],
      '',
      { ...rows[2], label: 2 },
      { ...rows[3], features: { ...(rows[3].features as object), quality: 'high' } },
      { ...rows[4], request_id: 7 },
      '[1, 2]',
      ...rows.slice(5),
    ]);
    const out = path.join(tmp, 'bad.yaml');
    const r = funnel('train-ranker', '--examples', file, '--out', out, '--json');
    assert.equal(r.status, 1, r.stderr);
    assert.deepEqual(r.stderr.trimEnd().split('\n'), [
      `${file}:2: bad JSON: ${(() => {
        try {
          JSON.parse('{"request_id": ');
        } catch (err) {
          return (err as Error).message;
        }
      })()}`,
      `${file}:5: label: must be 0 or 1 (got 2)`,
      `${file}:6: features.quality: must be a finite number`,
      `${file}:7: request_id: must be a non-empty string`,
      `${file}:8: expected a JSON object`,
      'funnel train-ranker: 5 bad lines skipped',
    ]);
    const j = JSON.parse(r.stdout);
    assert.deepEqual(j.examples, { file, lines: 503, used: 497, bad: 5 });
    assert.deepEqual(loadConfigFile(out).pipelines.default.stages.EarlyRanker.weights, j.weights);
  });

  it('when more than 100 lines are bad, then the first 100 are named and the rest counted', () => {
    const file = writeLines(path.join(tmp, 'many-bad.jsonl'), [...exampleRows(50, 4, 5), ...Array.from({ length: 130 }, () => '{"label": 1}')]);
    const r = funnel('train-ranker', '--examples', file, '--out', path.join(tmp, 'many-bad.yaml'));
    assert.equal(r.status, 1);
    const lines = r.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 101);
    assert.equal(lines[0], `${file}:201: request_id: must be a non-empty string`);
    assert.equal(lines[100], 'funnel train-ranker: 130 bad lines (the first 100 shown)');
  });

  it('when printing tables, then it shows log-loss and AUC per set, the held-out calibration, the weights and the file written', () => {
    const out = path.join(tmp, 'text.yaml');
    const r = funnel('train-ranker', '--examples', clean, '--out', out);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^examples: .*: 4,000 lines, 4,000 used, 0 bad$/m);
    assert.match(r.stdout, /^fit: IRLS, l2 1, \d+ iterations, converged; features all$/m);
    assert.match(r.stdout, /^train +[\d,]+ +\d+ +0\.\d+ +0\.\d+ +0\.\d+ +0\.\d+$/m);
    assert.match(r.stdout, /^held-out +[\d,]+ +\d+ /m);
    assert.match(r.stdout, /^calibration \(held-out rows; 10 buckets of equal count by predicted pCTR\)$/m);
    assert.equal(r.stdout.match(/^ +\d+ +[\d,]+ +0\.\d{5} +0\.\d{5} +0\.\d{5} +[01]\.\d{5}$/gm)?.length, 10);
    for (const name of ['bias', ...FEATURE_NAMES]) assert.match(r.stdout, new RegExp(`^${name} +-?\\d`, 'm'));
    assert.match(r.stdout, new RegExp(`^wrote ${out.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\(pipelines\\.default\\.stages\\.EarlyRanker\\.weights\\)$`, 'm'));
  });

  it('when --holdout is 0, then every request trains, the held-out measures are null and calibration is on the training rows', () => {
    const r = funnel('train-ranker', '--examples', clean, '--out', path.join(tmp, 'all.yaml'), '--json', '--holdout', '0');
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.equal(j.train.rows, 4000);
    assert.equal(j.holdout, null);
    const t = funnel('train-ranker', '--examples', clean, '--out', path.join(tmp, 'all.yaml'), '--holdout', '0');
    assert.match(t.stdout, /^calibration \(train rows;/m);
    assert.doesNotMatch(t.stdout, /^held-out/m);
  });

  it('when every training label is the same, then it cannot fit: exit 1, and no file is written', () => {
    const file = writeLines(
      path.join(tmp, 'no-clicks.jsonl'),
      exampleRows(20, 3).map((e) => ({ ...e, label: 0 })),
    );
    const out = path.join(tmp, 'no-clicks.yaml');
    const r = funnel('train-ranker', '--examples', file, '--out', out);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^funnel train-ranker: cannot fit: every training row has label 0: a fit needs both/m);
    assert.equal(fs.existsSync(out), false);
  });

  it('when the usage is bad, then it exits 2', () => {
    const out = path.join(tmp, 'usage.yaml');
    const bad: string[][] = [
      ['--holdout', '1'],
      ['--holdout', '-0.1'],
      ['--holdout', ''],
      ['--l2', '-1'],
      ['--l2', 'abc'],
      ['--seed', '1.5'],
      ['--features', 'quality,bogus'],
      ['--features', 'quality,quality'],
      ['--pipeline', ''],
    ];
    for (const extra of bad) {
      const r = funnel('train-ranker', '--examples', clean, '--out', out, ...extra);
      assert.equal(r.status, 2, `${extra.join(' ')}: ${r.stderr}`);
    }
    assert.equal(funnel('train-ranker', '--examples', clean).status, 2);
    assert.equal(funnel('train-ranker', '--out', out).status, 2);
    assert.match(funnel('train-ranker', '--examples', clean, '--out', out, '--features', 'bogus').stderr, /unknown feature\(s\) "bogus" \(known: ann_similarity, /);
    assert.equal(fs.existsSync(out), false);
  });

  it('when the examples cannot be read or the output cannot be written, then it exits 3 and says which', () => {
    const out = path.join(tmp, 'io.yaml');
    const missing = funnel('train-ranker', '--examples', path.join(tmp, 'nope.jsonl'), '--out', out);
    assert.equal(missing.status, 3);
    assert.match(missing.stderr, /^funnel train-ranker: cannot read .*nope\.jsonl: ENOENT/);
    const dir = funnel('train-ranker', '--examples', tmp, '--out', out);
    assert.equal(dir.status, 3);
    assert.match(dir.stderr, /it is a directory/);
    assert.equal(fs.existsSync(out), false);
    const unwritable = funnel('train-ranker', '--examples', clean, '--out', path.join(tmp, 'no-such-dir', 'w.yaml'));
    assert.equal(unwritable.status, 3);
    assert.match(unwritable.stderr, /^funnel train-ranker: cannot write .*no-such-dir.*w\.yaml: ENOENT/m);
  });
});
