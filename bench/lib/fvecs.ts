/**
 * TEXMEX `.fvecs` / `.ivecs` files: per row a little-endian int32 dimension `d`, then `d`
 * little-endian float32 (fvecs) or int32 (ivecs) values. Every row must have the same `d`.
 *
 * Files are read and written in chunks of rows, so a 1M x 128 file never needs a second copy
 * of itself in memory.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';

/** A row-major matrix read from or written to a vecs file: row `r` is `data[r*dim .. r*dim+dim)`. */
export interface VecsMatrix<T extends Float32Array | Int32Array> {
  rows: number;
  dim: number;
  data: T;
}

/** Options of {@link readFvecs} and {@link readIvecs}. */
export interface ReadVecsOptions {
  /** Read at most this many rows from the start of the file. Default: all. */
  maxRows?: number;
}

/** Largest dimension accepted: a header above it is taken as a corrupt or non-vecs file. */
export const MAX_VECS_DIM = 1 << 20;

const CHUNK_BYTES = 8 << 20;
const LITTLE_ENDIAN_HOST = os.endianness() === 'LE';

type Kind = 'fvecs' | 'ivecs';

function readVecs<T extends Float32Array | Int32Array>(
  file: string,
  kind: Kind,
  make: (length: number) => T,
  options: ReadVecsOptions,
): VecsMatrix<T> {
  const fd = fs.openSync(file, 'r');
  try {
    const size = fs.fstatSync(fd).size;
    if (size === 0) throw new Error(`${file}: empty ${kind} file`);
    if (size < 4) throw new Error(`${file}: truncated ${kind} file (${size} bytes, no complete dimension header)`);
    const head = Buffer.alloc(4);
    fs.readSync(fd, head, 0, 4, 0);
    const dim = head.readInt32LE(0);
    if (dim <= 0 || dim > MAX_VECS_DIM) {
      throw new Error(`${file}: invalid ${kind} dimension ${dim} in the first row header (expected 1..${MAX_VECS_DIM})`);
    }
    const rowBytes = 4 + 4 * dim;
    if (size % rowBytes !== 0) {
      const whole = Math.floor(size / rowBytes);
      throw new Error(
        `${file}: truncated ${kind} file: ${size} bytes is not a whole number of ${rowBytes}-byte rows ` +
          `(dim ${dim}); ${whole} complete rows then ${size - whole * rowBytes} stray bytes`,
      );
    }
    const totalRows = size / rowBytes;
    const rows = options.maxRows === undefined ? totalRows : Math.min(totalRows, Math.max(0, options.maxRows));
    const data = make(rows * dim);
    const chunkRows = Math.max(1, Math.floor(CHUNK_BYTES / rowBytes));
    // Buffer.alloc is never pooled, so byteOffset is 0 and every value is 4-byte aligned.
    const buf = Buffer.alloc(Math.min(rows, chunkRows) * rowBytes);
    for (let first = 0; first < rows; first += chunkRows) {
      const count = Math.min(chunkRows, rows - first);
      const bytes = count * rowBytes;
      let got = 0;
      while (got < bytes) {
        const n = fs.readSync(fd, buf, got, bytes - got, first * rowBytes + got);
        if (n === 0) throw new Error(`${file}: ${kind} file shrank while being read`);
        got += n;
      }
      for (let r = 0; r < count; r++) {
        const off = r * rowBytes;
        const rowDim = buf.readInt32LE(off);
        if (rowDim !== dim) {
          throw new Error(`${file}: row ${first + r} has dimension ${rowDim}, but row 0 has ${dim}`);
        }
        const dst = (first + r) * dim;
        if (LITTLE_ENDIAN_HOST) {
          const src =
            kind === 'fvecs'
              ? new Float32Array(buf.buffer, buf.byteOffset + off + 4, dim)
              : new Int32Array(buf.buffer, buf.byteOffset + off + 4, dim);
          data.set(src, dst);
        } else {
          for (let j = 0; j < dim; j++) {
            data[dst + j] = kind === 'fvecs' ? buf.readFloatLE(off + 4 + 4 * j) : buf.readInt32LE(off + 4 + 4 * j);
          }
        }
      }
    }
    return { rows, dim, data };
  } finally {
    fs.closeSync(fd);
  }
}

function writeVecs(file: string, kind: Kind, data: Float32Array | Int32Array, dim: number): void {
  if (!Number.isInteger(dim) || dim <= 0 || dim > MAX_VECS_DIM) {
    throw new Error(`${file}: invalid ${kind} dimension ${dim} (expected 1..${MAX_VECS_DIM})`);
  }
  if (data.length % dim !== 0) {
    throw new Error(`${file}: ${data.length} values is not a whole number of rows of dimension ${dim}`);
  }
  const rows = data.length / dim;
  const rowBytes = 4 + 4 * dim;
  const chunkRows = Math.max(1, Math.floor(CHUNK_BYTES / rowBytes));
  const buf = Buffer.alloc(Math.min(Math.max(rows, 1), chunkRows) * rowBytes);
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w');
  try {
    for (let first = 0; first < rows; first += chunkRows) {
      const count = Math.min(chunkRows, rows - first);
      for (let r = 0; r < count; r++) {
        const off = r * rowBytes;
        const src = (first + r) * dim;
        buf.writeInt32LE(dim, off);
        if (LITTLE_ENDIAN_HOST) {
          const dst =
            kind === 'fvecs'
              ? new Float32Array(buf.buffer, buf.byteOffset + off + 4, dim)
              : new Int32Array(buf.buffer, buf.byteOffset + off + 4, dim);
          dst.set(data.subarray(src, src + dim));
        } else {
          for (let j = 0; j < dim; j++) {
            if (kind === 'fvecs') buf.writeFloatLE(data[src + j], off + 4 + 4 * j);
            else buf.writeInt32LE(data[src + j], off + 4 + 4 * j);
          }
        }
      }
      const bytes = count * rowBytes;
      let put = 0;
      while (put < bytes) put += fs.writeSync(fd, buf, put, bytes - put);
    }
    fs.fsyncSync(fd);
  } catch (err) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw err;
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, file);
}

/** Reads a `.fvecs` file; throws a message naming the file on a bad header, a truncated file or mixed dimensions. */
export function readFvecs(file: string, options: ReadVecsOptions = {}): VecsMatrix<Float32Array> {
  return readVecs(file, 'fvecs', (n) => new Float32Array(n), options);
}

/** Reads an `.ivecs` file (e.g. ground-truth ids); same checks as {@link readFvecs}. */
export function readIvecs(file: string, options: ReadVecsOptions = {}): VecsMatrix<Int32Array> {
  return readVecs(file, 'ivecs', (n) => new Int32Array(n), options);
}

/** Writes `data` (rows of `dim` floats) as a `.fvecs` file, atomically (temp file then rename). */
export function writeFvecs(file: string, data: Float32Array, dim: number): void {
  writeVecs(file, 'fvecs', data, dim);
}

/** Writes `data` (rows of `dim` int32) as an `.ivecs` file, atomically (temp file then rename). */
export function writeIvecs(file: string, data: Int32Array, dim: number): void {
  writeVecs(file, 'ivecs', data, dim);
}
