import { strict as assert } from 'node:assert';
import { LoopLag } from '../../src/grpc/loop-lag';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
function block(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    /* busy: the event loop is held */
  }
}

describe('LoopLag', () => {
  it('when one long task blocks the loop once, then the sustained lag stays low', async () => {
    const lag = new LoopLag(10, 4).start();
    try {
      await sleep(60);
      block(150);
      await sleep(1);
      assert.ok(lag.lagMs < 100, `lag ${lag.lagMs}`);
    } finally {
      lag.stop();
    }
  });

  it('when every turn of the loop is late, then the sustained lag reports it', async () => {
    const lag = new LoopLag(10, 4).start();
    try {
      await sleep(30);
      for (let i = 0; i < 8; i++) {
        block(60);
        await sleep(0);
        await new Promise((r) => setImmediate(r));
      }
      assert.ok(lag.lagMs > 20, `lag ${lag.lagMs}`);
    } finally {
      lag.stop();
    }
  });
});
