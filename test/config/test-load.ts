import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ConfigError, defaultConfig, loadConfigFile, parseConfigText } from '../../src/config/load';
import { tempDir } from '../fixtures/catalog';

describe('config load', () => {
  it('when the file is empty, then every default is filled in', () => {
    const c = parseConfigText('');
    assert.deepEqual(c, defaultConfig());
    assert.equal(c.pipelines.default.stages.Ann.k, 50);
    assert.equal(c.limits.max_num_results, 500);
    assert.deepEqual(c.experiments, { salt: '', buckets: 100, arms: [] });
  });

  it('when a knob has the wrong type, then the error names its path', () => {
    assert.throws(
      () => parseConfigText('pipelines:\n  default:\n    stages:\n      Ann:\n        k: 0\n'),
      (e: unknown) => e instanceof ConfigError && e.issues.some((i) => i.startsWith('pipelines.default.stages.Ann.k:')),
    );
  });

  it('when tracing.sample_ratio is set, then 0..1 and null pass and anything else is refused with its path', () => {
    assert.equal(parseConfigText('').tracing.sample_ratio, null);
    assert.equal(parseConfigText('tracing: {sample_ratio: 0.25}\n').tracing.sample_ratio, 0.25);
    for (const bad of ['1.5', '-0.1', '"half"']) {
      assert.throws(
        () => parseConfigText(`tracing: {sample_ratio: ${bad}}\n`),
        (e: unknown) => e instanceof ConfigError && e.issues.some((i) => i.startsWith('tracing.sample_ratio:')),
        bad,
      );
    }
  });

  it('when a key is unknown, then it is refused (a typo never passes silently)', () => {
    assert.throws(() => parseConfigText('pipelines:\n  default:\n    stages:\n      Ann:\n        kk: 3\n'), ConfigError);
  });

  it('when a pipeline inherits, then it gets the parent knobs with its own overrides', () => {
    const c = parseConfigText(
      [
        'pipelines:',
        '  default:',
        '    stages:',
        '      Ann: {k: 300, ef: 64}',
        '  wide:',
        '    inherits: default',
        '    stages:',
        '      Ann: {ef: 256}',
        '      Diversifier: {max_per_advertiser: 1}',
      ].join('\n'),
    );
    assert.equal(c.pipelines.wide.stages.Ann.k, 300);
    assert.equal(c.pipelines.wide.stages.Ann.ef, 256);
    assert.equal(c.pipelines.wide.stages.Diversifier.max_per_advertiser, 1);
    assert.equal(c.pipelines.default.stages.Diversifier.max_per_advertiser, 3);
  });

  it('when inherits forms a cycle or names nothing, then the error says so', () => {
    assert.throws(() => parseConfigText('pipelines:\n  a: {inherits: b}\n  b: {inherits: a}\n'), /cycle/);
    assert.throws(() => parseConfigText('pipelines:\n  a: {inherits: nope}\n'), /no pipeline named "nope"/);
  });

  it('when default_pipeline names no pipeline, then it is refused', () => {
    assert.throws(() => parseConfigText('default_pipeline: x\n'), /default_pipeline: names no pipeline/);
  });

  it('when the pacing curve does not increase, then it is refused', () => {
    assert.throws(
      () => parseConfigText('pipelines:\n  default:\n    stages:\n      Filters:\n        pacing: {curve: [[0, 0], [0.5, 0.6], [0.4, 0.7], [1, 1]]}\n'),
      /points must increase/,
    );
  });

  it('when the YAML does not parse or repeats a key, then the error gives the line', () => {
    assert.throws(() => parseConfigText('a: [1,\n'), /line \d+/);
    assert.throws(() => parseConfigText('version: a\nversion: b\n'), ConfigError);
  });

  it('when a file is read, then missing files give a ConfigError naming the file', () => {
    const dir = tempDir('config');
    try {
      const file = path.join(dir, 'c.yaml');
      fs.writeFileSync(file, 'version: v7\n');
      assert.equal(loadConfigFile(file).version, 'v7');
      assert.throws(() => loadConfigFile(path.join(dir, 'missing.yaml')), (e: unknown) => e instanceof ConfigError && e.message.includes('missing.yaml'));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
