import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import {
  childPids,
  cpuDelta,
  parseChildrenList,
  parseSmapsRollup,
  parseStat,
  parseStatCpuSeconds,
  parseStatusKb,
  processCpuSeconds,
  processMemory,
  processSmaps,
  processTree,
  splitTreeCpu,
  treeCpu,
  treeMemory,
} from '../../bench/lib/proc';

/** A stat line: fields 3.. as given after `pid (comm)`. */
function statLine(comm: string, fields: { state?: string; ppid?: number; utime?: number; stime?: number; start?: number }): string {
  const f = Array.from({ length: 50 }, () => '0');
  f[0] = fields.state ?? 'S';
  f[1] = String(fields.ppid ?? 1);
  f[11] = String(fields.utime ?? 0);
  f[12] = String(fields.stime ?? 0);
  f[19] = String(fields.start ?? 0);
  return `4242 (${comm}) ${f.join(' ')}\n`;
}

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

  it('when a stat line is parsed, then state, parent, CPU seconds and start time come back', () => {
    const st = parseStat(statLine('node) (x', { state: 'R', ppid: 77, utime: 120, stime: 30, start: 98765 }));
    assert.deepEqual(st, { state: 'R', ppid: 77, cpuSeconds: 1.5, startTicks: 98765 });
    assert.equal(parseStat('4242 (node) S 1'), undefined);
  });

  it('when a children file is parsed, then every pid comes back and an empty file gives none', () => {
    assert.deepEqual(parseChildrenList('123 456 \n'), [123, 456]);
    assert.deepEqual(parseChildrenList(''), []);
  });

  it('when a smaps_rollup text is parsed, then private is Private_Clean + Private_Dirty in bytes', () => {
    const text = [
      '557a4eb81000-7ffdb4ed3000 ---p 00000000 00:00 0                          [rollup]',
      'Rss:                4076 kB',
      'Pss:                1087 kB',
      'Pss_Dirty:           567 kB',
      'Shared_Clean:       3120 kB',
      'Shared_Dirty:        704 kB',
      'Private_Clean:         4 kB',
      'Private_Dirty:       248 kB',
      'Swap:                  0 kB',
    ].join('\n');
    assert.deepEqual(parseSmapsRollup(text), { rss: 4076 * 1024, pss: 1087 * 1024, privateBytes: 252 * 1024, sharedBytes: 3824 * 1024 });
    assert.equal(parseSmapsRollup('Private_Clean: 4 kB\n'), undefined);
  });

  it('when two tree readings are compared, then a new process counts from zero and a gone one is dropped', () => {
    const start = new Map([
      [10, { allSeconds: 5, mainThreadSeconds: 1 }],
      [11, { allSeconds: 2, mainThreadSeconds: 1 }],
      [12, { allSeconds: 9, mainThreadSeconds: 9 }],
    ]);
    const end = new Map([
      [10, { allSeconds: 6, mainThreadSeconds: 1.5 }],
      [11, { allSeconds: 4, mainThreadSeconds: 2 }],
      [13, { allSeconds: 0.5, mainThreadSeconds: 0.25 }],
    ]);
    assert.deepEqual(
      [...cpuDelta(start, end)],
      [
        [10, { allSeconds: 1, mainThreadSeconds: 0.5 }],
        [11, { allSeconds: 2, mainThreadSeconds: 1 }],
        [13, { allSeconds: 0.5, mainThreadSeconds: 0.25 }],
      ],
    );
  });

  it('when a cluster tree is split, then all threads count everywhere and JS threads only in the workers', () => {
    const delta = new Map([
      [20, { allSeconds: 3, mainThreadSeconds: 2 }],
      [10, { allSeconds: 0.5, mainThreadSeconds: 0.25 }],
      [21, { allSeconds: 4, mainThreadSeconds: 3 }],
    ]);
    assert.deepEqual(splitTreeCpu(delta, 10, true), { allSeconds: 7.5, jsSeconds: 5, perServing: [3, 4] });
    // One process serving by itself: its own main thread is the JS thread; a child only adds to all threads.
    assert.deepEqual(splitTreeCpu(delta, 10, false), { allSeconds: 7.5, jsSeconds: 0.25, perServing: [0.5] });
  });

  it('when this process is read on Linux, then memory and CPU time are positive', function () {
    if (process.platform !== 'linux') this.skip();
    const mem = processMemory(process.pid);
    assert.ok((mem.rss ?? 0) > 0 && (mem.peakRss ?? 0) >= (mem.rss ?? 0));
    assert.ok((processCpuSeconds(process.pid) ?? -1) >= 0);
    assert.deepEqual(processMemory(2 ** 30), {});
    const smaps = processSmaps(process.pid);
    assert.ok(smaps !== undefined && smaps.rss > 0 && smaps.pss > 0 && smaps.privateBytes > 0 && smaps.privateBytes <= smaps.rss);
    assert.equal(processSmaps(2 ** 30), undefined);
  });

  it('when this process has a child, then both ways of finding children find it and the tree holds it', async function () {
    if (process.platform !== 'linux') this.skip();
    const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 30000)'], { stdio: 'ignore' });
    try {
      const pid = child.pid!;
      assert.ok(childPids(process.pid).includes(pid));
      assert.ok(childPids(process.pid, true).includes(pid));
      const tree = processTree(process.pid);
      assert.equal(tree[0], process.pid);
      assert.ok(tree.includes(pid));
      const cpu = treeCpu(process.pid);
      const mine = cpu.get(process.pid)!;
      assert.ok(mine.mainThreadSeconds > 0 && mine.mainThreadSeconds <= mine.allSeconds);
      assert.ok(cpu.has(pid));
      const mem = treeMemory(process.pid);
      assert.ok(mem.processes >= 2 && (mem.rss ?? 0) > (processMemory(process.pid).rss ?? 0));
      assert.deepEqual(childPids(2 ** 30), []);
    } finally {
      child.kill('SIGKILL');
      await once(child, 'exit');
    }
  });
});
