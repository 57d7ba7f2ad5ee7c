/** `funnel config validate FILE` and `funnel config print [--config FILE]`, run as the command line. */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parse, stringify } from 'yaml';
import { defaultConfig, loadConfigFile, parseConfigObject } from '../../src/config/load';
import { tempDir } from '../fixtures/catalog';

const CLI = path.resolve(__dirname, '..', '..', 'src', 'cli', 'main.js');
const funnel = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env: { ...process.env, OTEL_TRACES_EXPORTER: 'none' } });

describe('funnel config', () => {
  let tmp: string;
  let good: string;
  before(() => {
    tmp = tempDir('config-cli');
    good = path.join(tmp, 'good.yaml');
    fs.writeFileSync(
      good,
      stringify({
        version: 'exp-7',
        pipelines: {
          default: { description: 'base', stages: { Ann: { k: 42, ef: 64 }, Targeting: { prior: { bid: 2 } } } },
          lean: { inherits: 'default', description: 'no popularity', stages: { Popularity: { enabled: false }, Ann: { k: 10 } } },
        },
        experiments: { salt: 'x', buckets: 10, arms: [{ name: 'lean', pipeline: 'lean', buckets: [0, 4] }] },
      }),
    );
  });
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('when validate is given a valid file, then it exits 0 with a one-line summary', () => {
    const r = funnel('config', 'validate', good);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr, '');
    assert.equal(r.stdout, `${good}: valid (version exp-7; pipelines default, lean; default default; 1 experiment arm(s))\n`);
  });

  it('when validate is given an invalid file, then it exits 1 with one `path: reason` line per problem', () => {
    const bad = path.join(tmp, 'bad.yaml');
    fs.writeFileSync(bad, 'pipelines:\n  default:\n    stages:\n      Ann:\n        k: 0\n        nope: 1\nlimits:\n  max_in_flight: -1\n');
    const r = funnel('config', 'validate', bad);
    assert.equal(r.status, 1);
    assert.equal(r.stdout, '');
    const lines = r.stderr.trimEnd().split('\n');
    assert.ok(lines.some((l) => l.startsWith(`${bad}: pipelines.default.stages.Ann.k: `)), r.stderr);
    assert.ok(lines.some((l) => l.startsWith(`${bad}: pipelines.default.stages.Ann: `) && l.includes('nope')), r.stderr);
    assert.ok(lines.some((l) => l.startsWith(`${bad}: limits.max_in_flight: `)), r.stderr);
    assert.equal(lines.length, 3, r.stderr);
  });

  it('when validate meets broken YAML, an inherits cycle or a missing file, then it exits 1 and says where', () => {
    const yamlError = path.join(tmp, 'syntax.yaml');
    fs.writeFileSync(yamlError, 'version: v1\nlimits: [unclosed\n');
    const r1 = funnel('config', 'validate', yamlError);
    assert.equal(r1.status, 1);
    assert.match(r1.stderr, new RegExp(`^${yamlError}: line \\d+: `, 'm'));

    const cycle = path.join(tmp, 'cycle.yaml');
    fs.writeFileSync(cycle, stringify({ pipelines: { default: {}, a: { inherits: 'b' }, b: { inherits: 'a' } } }));
    const r2 = funnel('config', 'validate', cycle);
    assert.equal(r2.status, 1);
    assert.match(r2.stderr, /pipelines\.[ab]\.inherits: cycle /);

    const r3 = funnel('config', 'validate', path.join(tmp, 'missing.yaml'));
    assert.equal(r3.status, 1);
    assert.match(r3.stderr, /cannot read/);

    assert.equal(funnel('config', 'validate').status, 2);
  });

  it('when print is given no file, then it prints YAML that parses back to the built-in defaults', () => {
    const r = funnel('config', 'print');
    assert.equal(r.status, 0, r.stderr);
    const printed: unknown = parse(r.stdout);
    assert.deepEqual(printed, defaultConfig());
    assert.deepEqual(parseConfigObject(printed), defaultConfig());
  });

  it('when print is given a file, then it prints the effective config: defaults filled in and inherits resolved', () => {
    const r = funnel('config', 'print', '--config', good);
    assert.equal(r.status, 0, r.stderr);
    const printed = parse(r.stdout) as ReturnType<typeof defaultConfig>;
    assert.deepEqual(printed, loadConfigFile(good));
    const lean = printed.pipelines.lean;
    assert.equal('inherits' in lean, false);
    assert.equal(lean.description, 'no popularity');
    assert.equal(lean.stages.Ann.k, 10);
    assert.equal(lean.stages.Ann.ef, 64, 'inherited from default');
    assert.equal(lean.stages.Targeting.prior.bid, 2, 'inherited from default');
    assert.equal(lean.stages.Targeting.prior.quality, 1, 'a default');
    assert.equal(lean.stages.Popularity.enabled, false);
    assert.equal(printed.pipelines.default.stages.Popularity.enabled, true);
    assert.deepEqual(parseConfigObject(printed), printed, 'the printed config is itself a valid config');
  });

  it('when print is given an invalid file, then it exits 1 naming the problem', () => {
    const bad = path.join(tmp, 'bad-print.yaml');
    fs.writeFileSync(bad, 'default_pipeline: nope\n');
    const r = funnel('config', 'print', '--config', bad);
    assert.equal(r.status, 1);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /default_pipeline: names no pipeline/);
  });
});
