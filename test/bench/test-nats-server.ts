import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { findNatsServer, NatsServer, parseNatsListening } from '../../bench/lib/nats-server';

describe('bench nats-server', () => {
  it('when nats-server logs where it listens, then the client port is read; other lines give none', () => {
    assert.equal(parseNatsListening('[14220] 2026/11/29 20:08:15.293870 [INF] Listening for client connections on 127.0.0.1:44509'), 44509);
    assert.equal(parseNatsListening('[1] [INF] Listening for client connections on [::1]:4222'), 4222);
    assert.equal(parseNatsListening('[1] [INF] Listening for websocket clients on ws://127.0.0.1:8080'), undefined);
    assert.equal(parseNatsListening('[1] [INF] Server is ready'), undefined);
  });

  it('when NATS_SERVER is set, then it is used; else the first executable nats-server on PATH', () => {
    assert.equal(findNatsServer({ NATS_SERVER: '/opt/x/nats-server', PATH: '' }), '/opt/x/nats-server');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'funnel-nats-find-'));
    try {
      const file = path.join(dir, 'nats-server');
      fs.writeFileSync(file, '#!/bin/sh\n', { mode: 0o755 });
      assert.equal(findNatsServer({ PATH: `${path.join(dir, 'missing')}${path.delimiter}${dir}` }), file);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('when nats-server is installed and started, then it accepts connections on its port and exits 0 when stopped', async function () {
    const binary = findNatsServer();
    if (binary === undefined) return this.skip();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'funnel-nats-start-'));
    let nats: NatsServer | undefined;
    try {
      nats = await NatsServer.start(binary, path.join(dir, 'store'));
      assert.match(nats.url, /^nats:\/\/127\.0\.0\.1:\d+$/);
      await new Promise<void>((resolve, reject) => {
        const socket = net.connect(nats!.port, '127.0.0.1', () => {
          socket.destroy();
          resolve();
        });
        socket.once('error', reject);
      });
      assert.deepEqual(await nats.stop(), { killed: false });
      assert.deepEqual(nats.exit, { code: 0, signal: null });
    } finally {
      nats?.killNow();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
