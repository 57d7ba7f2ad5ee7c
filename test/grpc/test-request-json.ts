import { strict as assert } from 'node:assert';
import { blankRetrieve, decodeRetrieveRequest, encodeRetrieveRequest, type DecodedRetrieve } from '../../src/grpc/codec';
import { retrieveFromJson, retrieveToJson } from '../../src/grpc/request-json';

/** A request with every field set, decoded from the wire as the server sees it. */
function fullRequest(): DecodedRetrieve {
  return decodeRetrieveRequest(
    encodeRetrieveRequest({
      request_id: 'r-1',
      user_id: 'u-1',
      attributes: { country: { values: ['US', 'CA'] }, platform: { values: ['ios'] }, empty: { values: [] } },
      user_embedding: [0.1, -1 / 3, 3e-7, 1e30, Math.PI, -2.5e-38, 65504.123],
      num_results: 42,
      exclude_ad_ids: ['a1', 'a2'],
      exclude_advertiser_ids: ['adv-1'],
      blocked_categories: ['gambling'],
      pipeline: 'exp',
      debug: true,
    }),
  );
}

/** Bits of a float32 array, for bit-identical comparison. */
function bits(a: Float32Array): number[] {
  return Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));
}

function assertSame(actual: DecodedRetrieve, expected: DecodedRetrieve): void {
  assert.ok(actual.user_embedding instanceof Float32Array);
  assert.deepEqual(bits(actual.user_embedding), bits(expected.user_embedding));
  const { user_embedding: _a, decodeError: _ea, ...restA } = actual;
  const { user_embedding: _b, decodeError: _eb, ...restB } = expected;
  assert.deepEqual(restA, restB);
}

describe('RetrieveRequest proto3 JSON', () => {
  it('when a full request goes to JSON text and back, then every field and every embedding bit is the same', () => {
    const req = fullRequest();
    assert.equal(req.decodeError, undefined);
    const text = JSON.stringify(retrieveToJson(req));
    assertSame(retrieveFromJson(JSON.parse(text)), req);
  });

  it('when fields are at their defaults, then the JSON omits them and reads back to a blank request', () => {
    assert.deepEqual(retrieveToJson(blankRetrieve()), {});
    const req = { ...blankRetrieve(), request_id: 'only' };
    assert.deepEqual(retrieveToJson(req), { request_id: 'only' });
    assertSame(retrieveFromJson({}), blankRetrieve());
  });

  it('when written, then the JSON uses the proto field names and the attributes map form', () => {
    const json = retrieveToJson(fullRequest());
    assert.deepEqual(Object.keys(json), [
      'request_id',
      'user_id',
      'attributes',
      'user_embedding',
      'num_results',
      'exclude_ad_ids',
      'exclude_advertiser_ids',
      'blocked_categories',
      'pipeline',
      'debug',
    ]);
    assert.deepEqual(json.attributes, { country: { values: ['US', 'CA'] }, platform: { values: ['ios'] }, empty: { values: [] } });
    assert.ok(Array.isArray(json.user_embedding));
    assert.ok((json.user_embedding as unknown[]).every((x) => typeof x === 'number'));
  });

  it('when the input uses lowerCamelCase names, then it reads the same as with proto names', () => {
    const camel = {
      requestId: 'r-1',
      userId: 'u-1',
      attributes: { country: { values: ['US', 'CA'] } },
      userEmbedding: [0.5, -1],
      numResults: 7,
      excludeAdIds: ['a1'],
      excludeAdvertiserIds: ['adv-1'],
      blockedCategories: ['c'],
      pipeline: 'p',
      debug: true,
      minSeq: '12',
    };
    const snake = {
      request_id: 'r-1',
      user_id: 'u-1',
      attributes: { country: { values: ['US', 'CA'] } },
      user_embedding: [0.5, -1],
      num_results: 7,
      exclude_ad_ids: ['a1'],
      exclude_advertiser_ids: ['adv-1'],
      blocked_categories: ['c'],
      pipeline: 'p',
      debug: true,
      min_seq: 12,
    };
    assertSame(retrieveFromJson(camel), retrieveFromJson(snake));
    assert.equal(retrieveFromJson(camel).num_results, 7);
    assert.deepEqual(retrieveFromJson(camel).exclude_advertiser_ids, ['adv-1']);
  });

  it('when a field is given under both its names, then it is an error naming the field', () => {
    assert.throws(() => retrieveFromJson({ request_id: 'a', requestId: 'b' }), /^Error: request_id: given twice/);
  });

  it('when attributes use the shorthands, then they read as the map form', () => {
    const r = retrieveFromJson({ attributes: { country: ['US', 'CA'], platform: 'ios', lang: { values: ['en'] }, none: null } });
    assert.deepEqual(r.attributes, { country: { values: ['US', 'CA'] }, platform: { values: ['ios'] }, lang: { values: ['en'] }, none: { values: [] } });
  });

  it('when num_results is a decimal string, then it reads as the number; null fields and unknown fields are ignored', () => {
    const r = retrieveFromJson({ num_results: '25', user_id: null, something_new: { x: 1 }, min_seq: '99' });
    assert.equal(r.num_results, 25);
    assert.equal(r.user_id, '');
    assert.equal('something_new' in r, false);
    assert.equal(r.min_seq, 0, 'min_seq is read as none: offline there is nothing to wait for');
  });

  const badCases: { name: string; input: unknown; message: RegExp }[] = [
    { name: 'the request is not an object', input: [1], message: /^request: must be a JSON object/ },
    { name: 'request_id is a number', input: { request_id: 5 }, message: /^request_id: must be a string/ },
    { name: 'user_id is an object', input: { userId: {} }, message: /^user_id: must be a string/ },
    { name: 'attributes is a list', input: { attributes: [] }, message: /^attributes: must be an object/ },
    { name: 'an attribute value is a number', input: { attributes: { country: 3 } }, message: /^attributes\["country"\]: must be/ },
    { name: 'an attribute list holds a number', input: { attributes: { country: ['US', 1] } }, message: /^attributes\["country"\]\[1\]: must be a string/ },
    { name: 'an attribute values field is not a list', input: { attributes: { country: { values: 'US' } } }, message: /^attributes\["country"\]\.values: must be a list of strings/ },
    { name: 'user_embedding is not a list', input: { user_embedding: 'x' }, message: /^user_embedding: must be a list of numbers/ },
    { name: 'user_embedding holds a string that is no number', input: { user_embedding: [1, 2, 3, 'a'] }, message: /^user_embedding\[3\]: must be a finite number/ },
    { name: 'user_embedding holds "NaN"', input: { user_embedding: ['NaN'] }, message: /^user_embedding\[0\]: must be a finite number/ },
    { name: 'user_embedding holds a value beyond float32', input: { user_embedding: [0, 1e39] }, message: /^user_embedding\[1\]: must be a finite number/ },
    { name: 'num_results is negative', input: { num_results: -1 }, message: /^num_results: must be an integer/ },
    { name: 'num_results is fractional', input: { numResults: 1.5 }, message: /^num_results: must be an integer/ },
    { name: 'num_results is above uint32', input: { num_results: 2 ** 32 }, message: /^num_results: must be an integer/ },
    { name: 'num_results is a non-decimal string', input: { num_results: '0x10' }, message: /^num_results: must be an integer/ },
    { name: 'exclude_ad_ids is a string', input: { exclude_ad_ids: 'a' }, message: /^exclude_ad_ids: must be a list of strings/ },
    { name: 'exclude_advertiser_ids holds a number', input: { excludeAdvertiserIds: ['a', 2] }, message: /^exclude_advertiser_ids\[1\]: must be a string/ },
    { name: 'blocked_categories holds null', input: { blocked_categories: [null] }, message: /^blocked_categories\[0\]: must be a string/ },
    { name: 'pipeline is a boolean', input: { pipeline: true }, message: /^pipeline: must be a string/ },
    { name: 'debug is a string', input: { debug: 'true' }, message: /^debug: must be true or false/ },
  ];
  for (const c of badCases) {
    it(`when ${c.name}, then the error names the field`, () => {
      assert.throws(
        () => retrieveFromJson(c.input),
        (err: Error) => {
          assert.match(err.message, c.message);
          return true;
        },
      );
    });
  }

  it('when an attribute is named "__proto__", then it is refused instead of changing the prototype', () => {
    const parsed = JSON.parse('{"attributes": {"__proto__": {"values": ["x"]}, "country": ["US"]}}') as unknown;
    assert.throws(() => retrieveFromJson(parsed), /^Error: attributes: the attribute name "__proto__" is not allowed/);
    const proto = { attributes: Object.create({ inherited: { values: ['x'] } }) as object };
    assert.throws(() => retrieveFromJson(proto), /__proto__/);
  });
});
