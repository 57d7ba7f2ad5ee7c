import * as assert from 'node:assert/strict';
import { parseServingBanner } from '../../bench/lib/server-process';

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
});
