#!/usr/bin/env node
/**
 * Container health check: asks grpc.health.v1.Health/Check and exits 0 only when the answer is
 * SERVING (1 otherwise: NOT_SERVING while the data loads or during a drain, or no answer).
 * Usage: node ops/compose/healthcheck.js [HOST:PORT] [SERVICE]
 * (defaults 127.0.0.1:50051 and funnel.v1.Retrieval; '' asks for the whole server).
 * Plaintext only, like the compose stack; Kubernetes uses its native gRPC probes instead.
 */
'use strict';
const grpc = require('@grpc/grpc-js');
const { service } = require('grpc-health-check');

const addr = process.argv[2] || '127.0.0.1:50051';
const name = process.argv[3] === undefined ? 'funnel.v1.Retrieval' : process.argv[3];
const Health = grpc.makeClientConstructor(service, 'Health');
const client = new Health(addr, grpc.credentials.createInsecure());
client.check({ service: name }, { deadline: Date.now() + 3000 }, (err, res) => {
  client.close();
  if (err) {
    process.stderr.write(`health ${addr} '${name}': ${err.message}\n`);
    process.exit(1);
  }
  process.stdout.write(`health ${addr} '${name}': ${res.status}\n`);
  process.exit(res.status === 'SERVING' ? 0 : 1);
});
