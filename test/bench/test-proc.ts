import * as assert from 'node:assert/strict';
import { parseStatCpuSeconds, parseStatusKb, processCpuSeconds, processMemory } from '../../bench/lib/proc';

describe('bench /proc readers', () => {
  it('when a status text is parsed, then kB fields come back in bytes', () => {
    const text = 'Name:\tnode\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\nThreads:\t11\n';
    assert.equal(parseStatusKb(text, 'VmRSS'), 102400 * 1024);
    assert.equal(parseStatusKb(text, 'VmHWM'), 204800 * 1024);
    assert.equal(parseStatusKb(text, 'VmSwap'), undefined);
  });

  it('when the command name holds spaces and parentheses, then utime and stime are still found', () => {
    const fields = ['S', '1', '2', '3', '0', '-1', '4194560', '100', '0', '0', '0', '250', '50', '0', '0', '20'];
    const line = `4242 (node (my) worker) ${fields.join(' ')}\n`;
    assert.equal(parseStatCpuSeconds(line), 3);
    assert.equal(parseStatCpuSeconds('garbage'), undefined);
  });

  it('when this process is read on Linux, then memory and CPU time are positive', function () {
    if (process.platform !== 'linux') this.skip();
    const mem = processMemory(process.pid);
    assert.ok((mem.rss ?? 0) > 0 && (mem.peakRss ?? 0) >= (mem.rss ?? 0));
    assert.ok((processCpuSeconds(process.pid) ?? -1) >= 0);
    assert.deepEqual(processMemory(2 ** 30), {});
  });
});
