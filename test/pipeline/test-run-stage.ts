import { strict as assert } from 'node:assert';
import { pipelineSchema } from '../../src/config/schema';
import { NO_OBSERVER, runStage, type ContextBase, type StageObserver } from '../../src/pipeline/run-stage';
import type { Stage, StageContext, StageReport } from '../../src/pipeline/types';

const base = { query: {}, pipeline: pipelineSchema.parse({}), state: {}, nowMs: 0, eligible: null } as unknown as ContextBase;

function stage<T>(name: string, fn: (ctx: StageContext) => Promise<T> | T): Stage<unknown, T> {
  return { name, run: (ctx) => fn(ctx) };
}

describe('runStage', () => {
  it('when the stage answers, then the report has its counts, notes and ok status', async () => {
    const r = await runStage(
      stage('S', (ctx) => {
        ctx.note('k', 3);
        return [1, 2, 3];
      }),
      base,
      [1, 2, 3, 4],
      { timeoutMs: 1000 },
      NO_OBSERVER,
      new AbortController().signal,
    );
    assert.ok(r.ok);
    assert.deepEqual(r.ok && r.value, [1, 2, 3]);
    assert.equal(r.report.status, 'ok');
    assert.equal(r.report.candidatesIn, 4);
    assert.equal(r.report.candidatesOut, 3);
    assert.deepEqual(r.report.detail, { k: 3 });
  });

  it('when the stage outlives its limit, then it is reported as timeout and its signal is aborted', async () => {
    let seen: AbortSignal | undefined;
    const r = await runStage(
      stage('Slow', (ctx) => {
        seen = ctx.signal;
        return new Promise((resolve) => setTimeout(() => resolve([]), 200));
      }),
      base,
      [],
      { timeoutMs: 5 },
      NO_OBSERVER,
      new AbortController().signal,
    );
    assert.equal(r.ok, false);
    assert.equal(r.report.status, 'timeout');
    assert.equal(seen?.aborted, true);
    await r.settled;
  });

  it('when the stage throws, then it is reported as error with the message, never thrown', async () => {
    const r = await runStage(
      stage('Bad', () => {
        throw new Error('boom');
      }),
      base,
      [],
      { timeoutMs: 100 },
      NO_OBSERVER,
      new AbortController().signal,
    );
    assert.equal(r.report.status, 'error');
    assert.equal(r.report.error, 'boom');
  });

  it('when a fault is injected, then the delay makes it time out and error_rate 1 makes it fail', async () => {
    const s = stage('F', () => [1]);
    const delayed = await runStage(s, base, [], { timeoutMs: 10, fault: { delay_ms: 500, error_rate: 0 } }, NO_OBSERVER, new AbortController().signal);
    assert.equal(delayed.report.status, 'timeout');
    const failed = await runStage(s, base, [], { timeoutMs: 100, fault: { delay_ms: 0, error_rate: 1 } }, NO_OBSERVER, new AbortController().signal);
    assert.equal(failed.report.status, 'error');
    assert.equal(failed.report.error, 'injected fault');
  });

  it('when an observer is given, then it sees every start and the final report once', async () => {
    const seen: string[] = [];
    const reports: StageReport[] = [];
    const observer: StageObserver = {
      start: (name) => {
        seen.push(name);
        return (r) => reports.push(r);
      },
    };
    await runStage(stage('A', () => []), base, [], { timeoutMs: 100 }, observer, new AbortController().signal);
    await runStage(stage('B', () => Promise.reject(new Error('x'))), base, [], { timeoutMs: 100 }, observer, new AbortController().signal);
    assert.deepEqual(seen, ['A', 'B']);
    assert.deepEqual(
      reports.map((r) => [r.name, r.status]),
      [
        ['A', 'ok'],
        ['B', 'error'],
      ],
    );
  });

  it('when the request is cancelled, then the running stage is aborted', async () => {
    const parent = new AbortController();
    const p = runStage(
      stage('C', (ctx) => new Promise((_, reject) => ctx.signal.addEventListener('abort', () => reject(new Error('aborted'))))),
      base,
      [],
      { timeoutMs: 10_000 },
      NO_OBSERVER,
      parent.signal,
    );
    parent.abort(new Error('client went away'));
    const r = await p;
    assert.equal(r.ok, false);
    assert.equal(r.report.status, 'timeout');
  });
});
