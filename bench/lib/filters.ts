/** Allowed-id sets of the filtered benchmark, as sorted id lists and as bitsets. */
import { SeededRandom } from './dataset';

/** `max(1, round(n * fraction))` distinct ids drawn uniformly from [0, n), sorted ascending. */
export function randomSubset(n: number, fraction: number, rng: SeededRandom): Uint32Array {
  if (!Number.isInteger(n) || n <= 0) throw new Error(`randomSubset: n must be a positive integer, got ${n}`);
  if (!(fraction > 0 && fraction <= 1)) throw new Error(`randomSubset: fraction must be in (0, 1], got ${fraction}`);
  const count = Math.min(n, Math.max(1, Math.round(n * fraction)));
  const perm = new Uint32Array(n);
  for (let i = 0; i < n; i++) perm[i] = i;
  for (let i = 0; i < count; i++) {
    const j = i + rng.int(n - i);
    const t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
  return perm.slice(0, count).sort();
}

/** Bitset of `ids` over [0, n): bit `i` is `(bits[i >> 5] >>> (i & 31)) & 1`, the layout of SearchOptions.allowBits. */
export function toBitset(ids: ArrayLike<number>, n: number): Uint32Array {
  const bits = new Uint32Array(Math.ceil(n / 32));
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!Number.isInteger(id) || id < 0 || id >= n) throw new Error(`toBitset: id ${id} outside [0, ${n})`);
    bits[id >>> 5] |= 1 << (id & 31);
  }
  return bits;
}

/** Whether bit `id` of a {@link toBitset} bitset is set. */
export function hasBit(bits: Uint32Array, id: number): boolean {
  return ((bits[id >>> 5] >>> (id & 31)) & 1) === 1;
}
