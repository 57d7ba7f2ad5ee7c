/**
 * Just enough protobuf wire reading for the load generator to check Retrieve answers without
 * decoding them: count the candidates (field 1), read `degraded` (field 2) and the
 * `degraded_stages` (field 3), skipping everything else by its wire type.
 */

/** What the load generator keeps of one RetrieveResponse. */
export interface RetrieveGist {
  candidates: number;
  degraded: boolean;
  /** Names in `degraded_stages`, in message order. */
  degradedStages: string[];
}

function varint(buf: Uint8Array, pos: number): [value: number, next: number] {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < 10; i++) {
    if (pos >= buf.length) throw new Error('truncated varint');
    const b = buf[pos++];
    value += (b & 0x7f) * scale;
    if ((b & 0x80) === 0) return [value, pos];
    scale *= 128;
  }
  throw new Error('varint longer than 10 bytes');
}

/** Candidates, the `degraded` flag and the degraded stages of a serialized RetrieveResponse; throws on malformed bytes. */
export function scanRetrieveResponse(buf: Uint8Array): RetrieveGist {
  let candidates = 0;
  let degraded = false;
  const degradedStages: string[] = [];
  let pos = 0;
  while (pos < buf.length) {
    const [tag, afterTag] = varint(buf, pos);
    pos = afterTag;
    const field = Math.floor(tag / 8);
    const type = tag % 8;
    switch (type) {
      case 0: {
        const [v, next] = varint(buf, pos);
        if (field === 2) degraded = v !== 0;
        pos = next;
        break;
      }
      case 1:
        pos += 8;
        break;
      case 2: {
        const [len, next] = varint(buf, pos);
        if (field === 1) candidates++;
        else if (field === 3 && next + len <= buf.length) degradedStages.push(Buffer.from(buf.buffer, buf.byteOffset + next, len).toString('utf8'));
        pos = next + len;
        break;
      }
      case 5:
        pos += 4;
        break;
      default:
        throw new Error(`unsupported wire type ${type} (field ${field})`);
    }
    if (pos > buf.length) throw new Error(`field ${field} runs past the end of the message`);
  }
  return { candidates, degraded, degradedStages };
}
