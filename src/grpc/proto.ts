/**
 * The gRPC contract (proto/funnel/v1/*.proto) loaded once: the proto-loader package definition
 * (services, reflection) and the protobufjs types the Retrieve codec uses.
 */
import * as path from 'node:path';
import * as fs from 'node:fs';
import * as protoLoader from '@grpc/proto-loader';
import * as protobuf from 'protobufjs';

/** Directory holding `funnel/v1/*.proto`. */
export const PROTO_DIR = [path.resolve(__dirname, '..', '..', '..', 'proto'), path.resolve(__dirname, '..', '..', 'proto')].find((d) =>
  fs.existsSync(path.join(d, 'funnel', 'v1', 'retrieval.proto')),
)!;

/** The proto files, relative to PROTO_DIR. */
export const PROTO_FILES = ['funnel/v1/retrieval.proto', 'funnel/v1/admin.proto'];

/** proto-loader options: field names as written, int64 as decimal strings, unset scalars absent. */
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: false,
  arrays: true,
  objects: true,
  oneofs: true,
  includeDirs: [PROTO_DIR],
};

let definition: protoLoader.PackageDefinition | undefined;
/** The package definition of both services (and their messages). */
export function packageDefinition(): protoLoader.PackageDefinition {
  definition ??= protoLoader.loadSync(PROTO_FILES, LOADER_OPTIONS);
  return definition;
}

let withHealth: protoLoader.PackageDefinition | undefined;
/** The package definition plus grpc.health.v1 (what reflection describes: every service served). */
export function reflectedDefinition(): protoLoader.PackageDefinition {
  if (!withHealth) {
    const healthDir = path.join(path.dirname(require.resolve('grpc-health-check/package.json')), 'proto');
    withHealth = { ...packageDefinition(), ...protoLoader.loadSync('health/v1/health.proto', { ...LOADER_OPTIONS, includeDirs: [healthDir] }) };
  }
  return withHealth;
}

let root: protobuf.Root | undefined;
/** The protobufjs root of the contract. */
export function protoRoot(): protobuf.Root {
  if (!root) {
    const r = new protobuf.Root();
    r.resolvePath = (_origin, target) => (path.isAbsolute(target) ? target : path.join(PROTO_DIR, target));
    r.loadSync(PROTO_FILES, { keepCase: true });
    r.resolveAll();
    root = r;
  }
  return root;
}
