import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ServerProcess, parseServingBanner } from '../../bench/lib/server-process';

/**
 * A stand-in for `funnel serve`: prints the serving line, and on SIGHUP logs what the real server
 * logs after reading its config file (the file's text is the log message to print).
 */
const FAKE_SERVE = `
const fs = require('fs');
const file = process.argv[process.argv.indexOf('--config') + 1];
process.on('SIGHUP', () => {
  const msg = fs.readFileSync(file, 'utf8');
  process.stderr.write(JSON.stringify({ level: msg.startsWith('config refused') ? 50 : 30, msg }) + '\\n');
});
process.on('SIGTERM', () => process.exit(0));
// As the real server does: handlers first, then the serving line (a signal sent on seeing it must be handled).
process.stdout.write('funnel serving on 127.0.0.1:1 (1 ads, dim 4, seq 1; admin disabled; plaintext)\\n');
setInterval(() => {}, 1000);
`;

/** A stand-in for a cluster primary that exits on SIGTERM and leaves its child (a worker ignoring SIGTERM) running. */
const FAKE_PRIMARY = `
const { spawn } = require('child_process');
spawn(process.execPath, ['-e', 'process.on("SIGTERM", () => {}); setInterval(() => {}, 1000)'], { stdio: 'ignore' });
process.on('SIGTERM', () => process.exit(0));
setTimeout(() => process.stdout.write('funnel serving on 127.0.0.1:1 (1 ads, dim 4, seq 1; 1 workers)\\n'), 200);
setInterval(() => {}, 1000);
`;

describe('bench server process', () => {
  it('when the serving line is printed, then host, port, ads and dimension are read from it', () => {
    const line = 'funnel serving on 127.0.0.1:41233 (20000 ads, dim 64, seq 1; admin disabled; plaintext)';
    assert.deepEqual(parseServingBanner(line), { host: '127.0.0.1', port: 41233, ads: 20000, dim: 64 });
  });

  it('when the host is IPv6 or the details are missing, then what is there is read', () => {
    assert.deepEqual(parseServingBanner('funnel serving on [::1]:50051'), { host: '::1', port: 50051 });
    assert.deepEqual(parseServingBanner('funnel serving on 0.0.0.0:7 (0 ads, dim -, seq 0; x)'), { host: '0.0.0.0', port: 7, ads: 0 });
  });

  it('when another line is printed, then it is not taken for the serving line', () => {
    assert.equal(parseServingBanner('{"level":30,"msg":"listening"}'), undefined);
    assert.equal(parseServingBanner('funnel serving soon'), undefined);
  });

  it('when the server exits and leaves a child running, then stop() kills the child and counts it', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'funnel-server-process-'));
    try {
      fs.writeFileSync(path.join(dir, 'primary.js'), FAKE_PRIMARY);
      const server = await ServerProcess.start(path.join(dir, 'primary.js'), [], 10_000);
      const exit = await server.stop(5000);
      assert.equal(exit.code, 0);
      assert.equal(exit.leftovers, 1);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  describe('reloadAfter', () => {
    let dir: string;
    let server: ServerProcess | undefined;
    beforeEach(() => {
      dir = fs.mkdtempSync(path.join(os.tmpdir(), 'funnel-server-process-'));
      fs.writeFileSync(path.join(dir, 'serve.js'), FAKE_SERVE);
    });
    afterEach(async () => {
      await server?.stop(5000);
      server = undefined;
      fs.rmSync(dir, { recursive: true, force: true });
    });
    const start = async (config: string) => {
      const file = path.join(dir, 'funnel.yaml');
      fs.writeFileSync(file, config);
      server = await ServerProcess.start(path.join(dir, 'serve.js'), ['--config', file], 10_000);
      return file;
    };

    it('when the server logs that the new config serves, then it resolves after the file was written', async () => {
      const file = await start('unused');
      await server!.reloadAfter(() => fs.writeFileSync(file, 'config reloaded'));
    });

    it('when the server refuses the file, then it rejects with the refusal', async () => {
      const file = await start('unused');
      await assert.rejects(server!.reloadAfter(() => fs.writeFileSync(file, 'config refused; the previous config keeps serving')), /refused the config/);
    });

    it('when the server says nothing, then it rejects after the timeout; a failing write rejects at once', async () => {
      const file = await start('unused');
      await assert.rejects(server!.reloadAfter(() => fs.writeFileSync(file, 'something else'), 300), /did not report a reload within 300 ms/);
      await assert.rejects(
        server!.reloadAfter(() => {
          throw new Error('disk full');
        }),
        /disk full/,
      );
    });
  });
});
