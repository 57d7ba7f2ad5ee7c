/**
 * Config hot reload: ConfigWatcher on a temporary directory (debounce, unchanged content, bad
 * files, Kubernetes ConfigMap symlink swaps), a server started on a config file (new knobs
 * apply, a bad file is refused and the old config keeps serving, in-flight calls keep the
 * config they started with), and `funnel serve` reloading on SIGHUP.
 */
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { stringify } from 'yaml';
import { ConfigError } from '../../src/config/load';
import type { Config } from '../../src/config/schema';
import { ConfigWatcher, type ReloadOutcome } from '../../src/config/watch';
import { row, tempDir } from '../fixtures/catalog';
import { ingestRows, retrievalClient, rpcError, sleep, startE2eServer, type E2eServer } from '../fixtures/e2e-server';

const DEBOUNCE_MS = 30;

/** Polls `cond` until it holds (gives up after 10 s, which only a broken watcher reaches). */
async function waitFor(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    if (cond()) return;
    await sleep(10);
  }
  assert.fail(`gave up waiting for ${what}`);
}

/** Long enough for a file event and its debounced reload to have happened. */
const settle = () => sleep(DEBOUNCE_MS * 2 + 200);

const yaml = (version: string, extra: Record<string, unknown> = {}) => stringify({ version, ...extra });

describe('config hot reload', () => {
  describe('ConfigWatcher', () => {
    let dir: string;
    let watcher: ConfigWatcher | undefined;
    let applied: Config[];
    let reports: ReloadOutcome[];
    beforeEach(() => {
      dir = tempDir('watch');
      applied = [];
      reports = [];
    });
    afterEach(() => {
      watcher?.stop();
      watcher = undefined;
      fs.rmSync(dir, { recursive: true, force: true });
    });

    function watch(file: string, initialText: string): ConfigWatcher {
      watcher = new ConfigWatcher(file, initialText, (c) => applied.push(c), (o) => reports.push(o), DEBOUNCE_MS).start();
      return watcher;
    }

    it('when the file changes to a valid config, then apply is called once with it', async () => {
      const file = path.join(dir, 'funnel.yaml');
      const v1 = yaml('v1');
      fs.writeFileSync(file, v1);
      watch(file, v1);
      // Several writes in a burst: one debounced reload.
      const fd = fs.openSync(file, 'w');
      fs.writeSync(fd, 'version: v2\n');
      fs.writeSync(fd, 'pipelines:\n  default:\n    stages:\n      Ann:\n        k: 9\n');
      fs.closeSync(fd);
      await waitFor(() => applied.length > 0, 'apply');
      await settle();
      assert.equal(applied.length, 1);
      assert.equal(applied[0].version, 'v2');
      assert.equal(applied[0].pipelines.default.stages.Ann.k, 9);
      assert.deepEqual(reports.map((r) => r.result), ['ok']);
    });

    it('when the file is rewritten with the same content, then nothing is applied or reported', async () => {
      const file = path.join(dir, 'funnel.yaml');
      const v1 = yaml('v1');
      fs.writeFileSync(file, v1);
      watch(file, v1);
      fs.writeFileSync(file, v1);
      fs.writeFileSync(path.join(dir, 'unrelated.txt'), 'x');
      await settle();
      assert.equal(applied.length, 0);
      assert.deepEqual(reports, []);
      assert.deepEqual(await watcher!.reload(), { result: 'unchanged' });
    });

    it('when the file becomes invalid, then the error names the path and nothing is applied until a valid file comes', async () => {
      const file = path.join(dir, 'funnel.yaml');
      const v1 = yaml('v1');
      fs.writeFileSync(file, v1);
      watch(file, v1);
      fs.writeFileSync(file, 'version: bad\npipelines:\n  default:\n    stages:\n      Ann:\n        k: 0\n');
      await waitFor(() => reports.length > 0, 'the error report');
      assert.equal(applied.length, 0);
      const r = reports[0];
      assert.equal(r.result, 'error');
      assert.ok(r.result === 'error' && r.error instanceof ConfigError);
      assert.ok(r.result === 'error' && r.error.issues.some((i) => i.startsWith('pipelines.default.stages.Ann.k: ')), JSON.stringify(r));
      fs.writeFileSync(file, 'version: [unclosed\n');
      await waitFor(() => reports.length > 1, 'the YAML error report');
      assert.equal(reports[1].result, 'error');
      assert.equal(applied.length, 0);
      fs.writeFileSync(file, yaml('v3'));
      await waitFor(() => applied.length > 0, 'apply');
      assert.equal(applied[0].version, 'v3');
      assert.deepEqual(reports.map((x) => x.result), ['error', 'error', 'ok']);
    });

    it('when the file is removed, then the error says it cannot be read and nothing is applied', async () => {
      const file = path.join(dir, 'funnel.yaml');
      fs.writeFileSync(file, yaml('v1'));
      watch(file, yaml('v1'));
      fs.rmSync(file);
      await waitFor(() => reports.length > 0, 'the error report');
      assert.ok(reports[0].result === 'error' && /cannot read/.test(reports[0].error.issues[0]), JSON.stringify(reports[0]));
      assert.equal(applied.length, 0);
    });

    it('when a Kubernetes ConfigMap swaps its ..data symlink, then the new config is applied', async () => {
      // The kubelet's layout: dir/..<timestamp>/funnel.yaml, dir/..data -> ..<timestamp>,
      // dir/funnel.yaml -> ..data/funnel.yaml; an update writes a new timestamped directory and
      // renames a new ..data symlink over the old one.
      fs.mkdirSync(path.join(dir, '..2026_v1'));
      fs.writeFileSync(path.join(dir, '..2026_v1', 'funnel.yaml'), yaml('v1'));
      fs.symlinkSync('..2026_v1', path.join(dir, '..data'));
      fs.symlinkSync(path.join('..data', 'funnel.yaml'), path.join(dir, 'funnel.yaml'));
      const file = path.join(dir, 'funnel.yaml');
      watch(file, fs.readFileSync(file, 'utf8'));
      fs.mkdirSync(path.join(dir, '..2026_v2'));
      fs.writeFileSync(path.join(dir, '..2026_v2', 'funnel.yaml'), yaml('v2'));
      fs.symlinkSync('..2026_v2', path.join(dir, '..data_tmp'));
      fs.renameSync(path.join(dir, '..data_tmp'), path.join(dir, '..data'));
      fs.rmSync(path.join(dir, '..2026_v1'), { recursive: true });
      await waitFor(() => applied.length > 0, 'apply');
      await settle();
      assert.deepEqual(applied.map((c) => c.version), ['v2']);
      assert.deepEqual(reports.map((r) => r.result), ['ok']);
    });

    it('when reload() is called (SIGHUP), then it answers unchanged, ok or error without waiting for an event', async () => {
      const file = path.join(dir, 'funnel.yaml');
      fs.writeFileSync(file, yaml('v1'));
      watcher = new ConfigWatcher(file, yaml('v1'), (c) => applied.push(c), (o) => reports.push(o), DEBOUNCE_MS);
      assert.deepEqual(await watcher.reload(), { result: 'unchanged' });
      fs.writeFileSync(file, yaml('v2'));
      const ok = await watcher.reload();
      assert.ok(ok.result === 'ok' && ok.config.version === 'v2');
      assert.deepEqual(await watcher.reload(), { result: 'unchanged' });
      fs.writeFileSync(file, 'limits: {max_in_flight: 0}\n');
      const bad = await watcher.reload();
      assert.ok(bad.result === 'error' && bad.error.issues.some((i) => i.startsWith('limits.max_in_flight: ')), JSON.stringify(bad));
      // SIGHUP on the same refused file says it is still refused (not "unchanged").
      const again = await watcher.reload();
      assert.ok(again.result === 'error' && again.error === bad.error, JSON.stringify(again));
      assert.deepEqual(applied.map((c) => c.version), ['v2']);
    });

    it('when stopped, then changes are no longer applied', async () => {
      const file = path.join(dir, 'funnel.yaml');
      fs.writeFileSync(file, yaml('v1'));
      watch(file, yaml('v1')).stop();
      fs.writeFileSync(file, yaml('v2'));
      await settle();
      assert.equal(applied.length, 0);
    });
  });

  describe('a server started on a config file', () => {
    const DIM = 4;
    let s: E2eServer;
    let cfgDir: string;
    let file: string;
    const logs: { msg: string; version?: string; issues?: string[] }[] = [];
    const base = (version: string, pipelines: Record<string, unknown> = { default: {} }, extra: Record<string, unknown> = {}) =>
      yaml(version, { limits: { shed_event_loop_lag_ms: 0 }, pipelines, ...extra });
    const slowTargeting = { stages: { Targeting: { fault: { delay_ms: 800 }, timeout_ms: 5000, k: 7 } } };
    const reloads = async (result: string) => {
      const m = new RegExp(`^funnel_config_reloads_total\\{result="${result}"\\} (\\d+)$`, 'm').exec(await s.running.metrics.text());
      return Number(m?.[1]);
    };
    const versions = async () => [...(await s.running.metrics.text()).matchAll(/^funnel_config_info\{version="([^"]*)"\} 1$/gm)].map((m) => m[1]);
    const req = (extra: Record<string, unknown> = {}) => ({ user_id: 'u-1', user_embedding: [1, 0, 0, 0], num_results: 30, debug: true, ...extra });

    before(async () => {
      cfgDir = tempDir('reload');
      file = path.join(cfgDir, 'funnel.yaml');
      fs.writeFileSync(file, base('v1'));
      s = await startE2eServer({
        rows: Array.from({ length: 30 }, (_, n) => row(n, DIM)),
        configFile: file,
        tracing: { env: {} },
        logger: pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line)) }),
      });
    });
    after(async () => {
      await s?.stop();
      fs.rmSync(cfgDir, { recursive: true, force: true });
    });

    it('when the file changes, then later Retrieves use the new knobs and funnel_config_info shows the new version', async () => {
      const before = await s.retrieval.retrieve(req());
      assert.ok(before.candidates.some((c) => c.sources.includes('Targeting')));
      assert.deepEqual(await versions(), ['v1']);
      const ok0 = await reloads('ok');
      fs.writeFileSync(file, base('v2', { default: { stages: { Targeting: { enabled: false } } } }));
      await waitFor(() => s.running.server.config.version === 'v2', 'the reload');
      const after = await s.retrieval.retrieve(req());
      assert.ok(after.candidates.length > 0);
      assert.ok(after.candidates.every((c) => !c.sources.includes('Targeting')), JSON.stringify(after.candidates.map((c) => c.sources)));
      assert.equal(after.stages.find((st) => st.name === 'Targeting')?.status, 'skipped');
      assert.deepEqual(await versions(), ['v2']);
      assert.equal(await reloads('ok'), ok0 + 1);
      assert.ok(logs.some((l) => l.msg === 'config reloaded' && l.version === 'v2'));
      assert.deepEqual(await s.running.reloadConfig(), { result: 'unchanged' });
    });

    it('when the file becomes invalid, then it is refused with a log line and the old config keeps serving', async () => {
      const version = s.running.server.config.version;
      const errors0 = await reloads('error');
      fs.writeFileSync(file, base('broken', { default: { stages: { Ann: { k: 0 } } } }));
      await waitFor(() => logs.some((l) => l.msg.startsWith('config refused')), 'the refusal');
      const line = logs.find((l) => l.msg.startsWith('config refused'))!;
      assert.ok(line.issues?.some((i) => i.startsWith('pipelines.default.stages.Ann.k: ')), JSON.stringify(line));
      assert.equal(s.running.server.config.version, version);
      assert.deepEqual(await versions(), [version]);
      assert.equal(await reloads('error'), errors0 + 1);
      const res = await s.retrieval.retrieve(req());
      assert.ok(res.candidates.length > 0);
    });

    it('when the config changes during a call, then the call finishes on the config it started with', async () => {
      fs.writeFileSync(file, base('v3', { default: {}, slowtarget: slowTargeting }));
      assert.equal((await s.running.reloadConfig()).result, 'ok');
      const call = s.retrieval.retrieve(req({ pipeline: 'slowtarget' }), { deadlineMs: 10_000 });
      await waitFor(() => s.running.server.inFlightCount === 1, 'the call to start');
      // The pipeline the call runs on disappears, and the default pipeline changes.
      fs.writeFileSync(file, base('v4', { other: { stages: { Targeting: { enabled: false } } } }, { default_pipeline: 'other' }));
      const outcome = await s.running.reloadConfig();
      assert.ok(outcome.result === 'ok' && outcome.config.version === 'v4');
      assert.equal(s.running.server.inFlightCount, 1, 'the reload did not wait for the call');
      const res = await call;
      assert.equal(res.pipeline, 'slowtarget');
      assert.deepEqual(res.degraded_stages, []);
      const targeting = res.stages.find((st) => st.name === 'Targeting');
      assert.equal(targeting?.status, 'ok');
      assert.equal(targeting?.candidates_out, 7);
      const err = await rpcError(s.retrieval.retrieve(req({ pipeline: 'slowtarget' })));
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
      assert.match(err.details, /pipeline/);
      const now = await s.retrieval.retrieve(req());
      assert.equal(now.pipeline, 'other');
    });
  });

  describe('funnel serve', () => {
    const CLI = path.resolve(__dirname, '..', '..', 'src', 'cli', 'main.js');
    let dir: string;
    let child: ChildProcess | undefined;
    before(() => {
      dir = tempDir('sighup');
    });
    after(async () => {
      if (child && child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child!.once('exit', resolve));
        child.kill('SIGKILL');
        await exited;
      }
      fs.rmSync(dir, { recursive: true, force: true });
    });

    it('when it gets SIGHUP, then it re-reads the config: a new default pipeline serves, an unchanged file is logged as such', async () => {
      const data = await ingestRows(dir, Array.from({ length: 10 }, (_, n) => row(n, 4)));
      const file = path.join(dir, 'funnel.yaml');
      const pipelines = { a: {}, b: { stages: { Popularity: { enabled: false } } } };
      const limits = { shed_event_loop_lag_ms: 0 };
      fs.writeFileSync(file, stringify({ version: 'h1', default_pipeline: 'a', pipelines, limits }));
      const proc = spawn(process.execPath, [CLI, 'serve', '--data', data, '--config', file, '--port', '0', '--metrics-port', '0', '--workers', '1'], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, FUNNEL_LOG_LEVEL: 'info', OTEL_TRACES_EXPORTER: 'none' },
      });
      child = proc;
      let stdout = '';
      let stderr = '';
      proc.stdout!.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
      proc.stderr!.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
      const exit = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
      await waitFor(() => /funnel serving on /.test(stdout) || proc.exitCode !== null, 'the server to start');
      const m = /funnel serving on ([\d.]+:\d+) .*metrics off/.exec(stdout);
      assert.ok(m, `stdout: ${stdout}\nstderr: ${stderr}`);
      const client = retrievalClient(m[1]);
      try {
        assert.equal((await client.retrieve({ user_id: 'x' })).pipeline, 'a');
        const messages = () => stderr.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { msg: string; version?: string });
        proc.kill('SIGHUP');
        await waitFor(() => messages().some((l) => l.msg === 'SIGHUP: config unchanged'), 'the unchanged log line');
        fs.writeFileSync(file, stringify({ version: 'h2', default_pipeline: 'b', pipelines, limits }));
        proc.kill('SIGHUP');
        await waitFor(() => messages().some((l) => l.msg === 'config reloaded' && l.version === 'h2'), 'the reload log line');
        assert.equal((await client.retrieve({ user_id: 'x' })).pipeline, 'b');
        assert.equal(messages().filter((l) => l.msg === 'config reloaded').length, 1);
      } finally {
        client.close();
      }
      proc.kill('SIGTERM');
      assert.equal(await exit, 0, stderr);
    });
  });
});
