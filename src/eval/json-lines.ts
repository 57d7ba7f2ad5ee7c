/** Reading JSON Lines files line by line, with each line's `FILE:LINE` for error messages. */
import * as fs from 'node:fs';
import * as readline from 'node:readline';

/** One non-blank line of a JSON Lines file: its parsed value, or why it is not JSON. */
export type JsonLine = { where: string; value: unknown; error?: undefined } | { where: string; value?: undefined; error: string };

/** Yields every non-blank line of `file`, parsed; a line that is not JSON comes with `bad JSON: ...`. */
export async function* readJsonLines(file: string): AsyncGenerator<JsonLine> {
  const rl = readline.createInterface({ input: fs.createReadStream(file, { encoding: 'utf8' }), crlfDelay: Infinity });
  let n = 0;
  for await (const text of rl) {
    n++;
    if (text.trim() === '') continue;
    const where = `${file}:${n}`;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (err) {
      yield { where, error: `bad JSON: ${(err as Error).message}` };
      continue;
    }
    yield { where, value };
  }
}
