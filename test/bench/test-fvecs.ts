import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { readFvecs, readIvecs, writeFvecs, writeIvecs } from '../../bench/lib/fvecs';

describe('bench fvecs/ivecs', () => {
  let dir: string;

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'funnel-test-fvecs-'));
  });

  afterEach(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('when a float matrix is written and read back, then rows, dim and values are identical', () => {
    const dim = 5;
    const data = Float32Array.from({ length: 7 * dim }, (_, i) => (i - 11) * 0.37);
    const file = path.join(dir, 'a.fvecs');
    writeFvecs(file, data, dim);
    assert.equal(fs.statSync(file).size, 7 * (4 + 4 * dim));
    const back = readFvecs(file);
    assert.equal(back.rows, 7);
    assert.equal(back.dim, dim);
    assert.deepEqual(back.data, data);
  });

  it('when an int matrix is written and read back, then values are identical', () => {
    const data = Int32Array.from([0, 1, 2, -3, 2147483647, -2147483648]);
    const file = path.join(dir, 'a.ivecs');
    writeIvecs(file, data, 3);
    const back = readIvecs(file);
    assert.equal(back.rows, 2);
    assert.equal(back.dim, 3);
    assert.deepEqual(back.data, data);
  });

  it('when maxRows is given, then only the first rows are read', () => {
    const file = path.join(dir, 'b.fvecs');
    writeFvecs(file, Float32Array.from([1, 2, 3, 4, 5, 6]), 2);
    const back = readFvecs(file, { maxRows: 2 });
    assert.equal(back.rows, 2);
    assert.deepEqual(back.data, Float32Array.from([1, 2, 3, 4]));
  });

  it('when the file has the known TEXMEX layout, then it is parsed as little-endian dim + values', () => {
    const buf = Buffer.alloc(2 * (4 + 8));
    buf.writeInt32LE(2, 0);
    buf.writeFloatLE(1.5, 4);
    buf.writeFloatLE(-2, 8);
    buf.writeInt32LE(2, 12);
    buf.writeFloatLE(0.25, 16);
    buf.writeFloatLE(8, 20);
    const file = path.join(dir, 'c.fvecs');
    fs.writeFileSync(file, buf);
    assert.deepEqual(readFvecs(file).data, Float32Array.from([1.5, -2, 0.25, 8]));
  });

  it('when the file is truncated mid-row, then reading throws naming the file and the stray bytes', () => {
    const file = path.join(dir, 'd.fvecs');
    writeFvecs(file, new Float32Array(3 * 4), 4);
    fs.truncateSync(file, 3 * 20 - 6);
    assert.throws(() => readFvecs(file), (err: Error) => {
      assert.match(err.message, /d\.fvecs: truncated fvecs file/);
      assert.match(err.message, /2 complete rows then 14 stray bytes/);
      return true;
    });
  });

  it('when the file is shorter than a header, empty, or has a bad dimension, then reading throws', () => {
    const short = path.join(dir, 'short.fvecs');
    fs.writeFileSync(short, Buffer.from([1, 0]));
    assert.throws(() => readFvecs(short), /truncated fvecs file \(2 bytes/);
    const empty = path.join(dir, 'empty.ivecs');
    fs.writeFileSync(empty, Buffer.alloc(0));
    assert.throws(() => readIvecs(empty), /empty ivecs file/);
    const bad = path.join(dir, 'bad.fvecs');
    const buf = Buffer.alloc(8);
    buf.writeInt32LE(-1, 0);
    fs.writeFileSync(bad, buf);
    assert.throws(() => readFvecs(bad), /invalid fvecs dimension -1/);
  });

  it('when a later row has another dimension, then reading throws naming that row', () => {
    const buf = Buffer.alloc(2 * 12);
    buf.writeInt32LE(2, 0);
    buf.writeInt32LE(3, 12);
    const file = path.join(dir, 'mixed.fvecs');
    fs.writeFileSync(file, buf);
    assert.throws(() => readFvecs(file), /row 1 has dimension 3, but row 0 has 2/);
  });

  it('when writing values that are not whole rows, then it throws and leaves no file', () => {
    const file = path.join(dir, 'e.fvecs');
    assert.throws(() => writeFvecs(file, new Float32Array(5), 2), /not a whole number of rows/);
    assert.equal(fs.existsSync(file), false);
  });
});
