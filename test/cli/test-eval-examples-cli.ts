/** `funnel eval --examples`, run as the command line: the tables, --json lines, --against, bad lines and exit codes. */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { stringify } from 'yaml';
import { tempDir } from '../fixtures/catalog';
import { exampleRows, TRUE_WEIGHTS } from '../fixtures/examples';

const CLI = path.resolve(__dirname, '..', '..', 'src', 'cli', 'main.js');
const funnel = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, OTEL_TRACES_EXPORTER: 'none' } });

describe('funnel eval --examples', () => {
  let tmp: string;
  let examples: string;
  let truth: string;
  before(() => {
    tmp = tempDir('eval-examples');
    const rows = exampleRows(100, 10, 5).map((r) => ({ ...r, pipeline: 'default' }));
    examples = path.join(tmp, 'examples.jsonl');
    fs.writeFileSync(examples, rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
    truth = path.join(tmp, 'truth.yaml');
    fs.writeFileSync(truth, stringify({ pipelines: { default: { stages: { EarlyRanker: { weights: TRUE_WEIGHTS } } } } }));
  });
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('when given --examples without --requests, then it prints one JSON line per config and exits 0; the drawn-from config has the lower log-loss', () => {
    const r = funnel('eval', '--examples', examples, '--config', truth, '--against', path.join(tmp, 'missing-is-checked.yaml'));
    assert.equal(r.status, 2, 'an unreadable --against is a config error');
    const defaults = path.join(tmp, 'defaults.yaml');
    fs.writeFileSync(defaults, 'version: defaults\n');
    const j = funnel('eval', '--examples', examples, '--config', truth, '--against', defaults, '--json');
    assert.equal(j.status, 0, j.stderr);
    const lines = j.stdout.trimEnd().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(lines.map((l) => [l.config, l.pipeline, l.examples]), [['truth.yaml', 'default', 1000], ['defaults.yaml', 'default', 1000]]);
    for (const k of ['log_loss', 'auc', 'mean_pctr', 'base_rate']) assert.equal(typeof lines[0][k], 'number', k);
    assert.ok(lines[0].log_loss < lines[1].log_loss, `${lines[0].log_loss} vs ${lines[1].log_loss}`);
    assert.equal(lines[0].base_rate, lines[1].base_rate);

    const t = funnel('eval', '--examples', examples, '--config', truth, '--against', defaults);
    assert.equal(t.status, 0, t.stderr);
    assert.match(t.stdout, /log-loss/);
    assert.match(t.stdout, /defaults\.yaml against truth\.yaml, pipeline default: log-loss \+\d\.\d+ \(worse\)/);
    assert.equal((t.stdout.match(/calibration: /g) ?? []).length, 2);
  });

  it('when some example lines are bad, then each is named FILE:LINE with its reason, the rest are scored, and it exits 1', () => {
    const bad = path.join(tmp, 'bad.jsonl');
    const good = fs.readFileSync(examples, 'utf8').split('\n').slice(0, 20);
    fs.writeFileSync(bad, [good[0], '{not json', JSON.stringify({ request_id: 'r', label: 2, features: {} }), ...good.slice(1)].join('\n') + '\n');
    const r = funnel('eval', '--examples', bad, '--json');
    assert.equal(r.status, 1);
    assert.match(r.stderr, new RegExp(`${bad.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:2: bad JSON`));
    assert.match(r.stderr, /bad\.jsonl:3: label: must be 0 or 1/);
    assert.equal(JSON.parse(r.stdout.trim()).examples, 20);
    assert.equal(funnel('eval', '--config', truth).status, 2, 'neither --requests nor --examples');
  });
});
