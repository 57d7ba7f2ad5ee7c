/** Plain-text tables with aligned columns, and the number formats the CLI and the benchmarks print. */

/** One column: its header and which side its cells line up on (default `right`). */
export interface Column {
  header: string;
  align?: 'left' | 'right';
}

/** Renders a title line, a header, a rule and the rows; every row must have one cell per column. */
export function formatTable(title: string, columns: readonly Column[], rows: readonly (readonly string[])[]): string {
  for (const [i, row] of rows.entries()) {
    if (row.length !== columns.length) {
      throw new Error(`table "${title}": row ${i} has ${row.length} cells, expected ${columns.length}`);
    }
  }
  const widths = columns.map((c, j) => Math.max(c.header.length, ...rows.map((r) => r[j].length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((cell, j) => (columns[j].align === 'left' ? cell.padEnd(widths[j]) : cell.padStart(widths[j])))
      .join('  ')
      .trimEnd();
  const out = [title, line(columns.map((c) => c.header)), widths.map((w) => '-'.repeat(w)).join('  ')];
  for (const row of rows) out.push(line(row));
  return out.join('\n');
}

/** Fixed-point with `digits` decimals; `-` for undefined or NaN. */
export function fixed(value: number | undefined, digits: number): string {
  return value === undefined || Number.isNaN(value) ? '-' : value.toFixed(digits);
}

/** Integer with thousands separators (`12,345`); `-` for undefined or NaN. */
export function grouped(value: number | undefined): string {
  return value === undefined || Number.isNaN(value) ? '-' : Math.round(value).toLocaleString('en-US');
}

/** Bytes as mebibytes with one decimal; `-` for undefined or NaN. */
export function mebibytes(bytes: number | undefined): string {
  return bytes === undefined || Number.isNaN(bytes) ? '-' : (bytes / (1 << 20)).toFixed(1);
}

/** `value` rounded to `digits` decimals (for JSON rows). */
export function round(value: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}
