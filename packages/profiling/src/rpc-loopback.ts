/**
 * Link figures of this machine (issue 4, item 1): round-trip time and
 * one-way bandwidth of a gRPC bidirectional stream over loopback to another
 * process.
 */
import { spawn } from "node:child_process";
import { createRequire } from "node:module";
import * as grpc from "@grpc/grpc-js";
import type { RpcLink } from "@tessera/scheduler";

const SINK_PATH = "/tessera.profile.v1.Profile/Sink";
const raw = { serialize: (b: Buffer) => b, deserialize: (b: Buffer) => b };

// Runs in a child process (as another node): a grpc-js server whose
// bidirectional Sink stream answers every request message with one empty
// message; prints its port on stdout, exits when stdin closes.
const SINK_SERVER = `
const grpc = require(process.env.TESSERA_GRPC);
const raw = { serialize: (b) => b, deserialize: (b) => b };
const server = new grpc.Server({ "grpc.max_receive_message_length": -1 });
server.addService(
  { Sink: { path: process.env.TESSERA_SINK, requestStream: true, responseStream: true,
    requestSerialize: raw.serialize, requestDeserialize: raw.deserialize,
    responseSerialize: raw.serialize, responseDeserialize: raw.deserialize } },
  { Sink: (call) => { call.on("data", () => call.write(Buffer.alloc(0))); call.on("end", () => call.end()); call.on("error", () => {}); } },
);
server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, port) => {
  if (e) { console.error(String(e)); process.exit(1); }
  console.log(port);
});
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
`;

/**
 * Round trip and bandwidth of gRPC messages over loopback as the gpu-node
 * talks to an attention node: one long-lived bidirectional stream (grpc-js,
 * raw byte messages) to a server in a child Node process (another process
 * on the same cores, as the local cluster's nodes). RTT is the median of
 * `calls` empty request/reply pairs; bandwidth `payload` bytes over (best
 * large request's round trip − RTT). Raw bytes: protobuf encoding and the
 * nodes' own request handling are not in these figures.
 * @throws Error when the child cannot start or bind a loopback port.
 */
export async function measureRpcLoopback(calls = 100, payload = 4 * 2 ** 20): Promise<RpcLink> {
  const child = spawn(process.execPath, ["-e", SINK_SERVER], {
    env: {
      ...process.env,
      TESSERA_GRPC: createRequire(import.meta.url).resolve("@grpc/grpc-js"),
      TESSERA_SINK: SINK_PATH,
    },
    stdio: ["pipe", "pipe", "pipe"],
  });
  let client: grpc.Client | undefined;
  try {
    const port = await new Promise<number>((resolve, reject) => {
      let out = "";
      let err = "";
      child.stdout.on("data", (d: Buffer) => {
        out += d.toString();
        if (out.includes("\n")) resolve(Number(out.trim()));
      });
      child.stderr.on("data", (d: Buffer) => (err += d.toString()));
      child.once("error", reject);
      child.once("exit", (code) => reject(new Error(`measureRpcLoopback: server exited (${code}): ${err.trim()}`)));
    });
    client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), {
      "grpc.max_send_message_length": -1,
    });
    const stream = client.makeBidiStreamRequest(SINK_PATH, raw.serialize, raw.deserialize);
    const waiting: { resolve: (s: number) => void; reject: (e: Error) => void; t0: number }[] = [];
    stream.on("data", () => {
      const w = waiting.shift();
      w?.resolve((performance.now() - w.t0) / 1000);
    });
    stream.on("error", (e: Error) => {
      for (const w of waiting.splice(0)) w.reject(e);
    });
    const call = (b: Buffer) =>
      new Promise<number>((resolve, reject) => {
        waiting.push({ resolve, reject, t0: performance.now() });
        stream.write(b);
      });
    const empty = Buffer.alloc(0);
    for (let i = 0; i < 20; i++) await call(empty);
    const rtts: number[] = [];
    for (let i = 0; i < calls; i++) rtts.push(await call(empty));
    rtts.sort((a, b) => a - b);
    const rttS = rtts[Math.floor(rtts.length / 2)]!;
    const big = Buffer.alloc(payload, 7);
    let best = Infinity;
    for (let i = 0; i < 8; i++) best = Math.min(best, await call(big));
    stream.end();
    return { rttS, bytesPerS: payload / Math.max(best - rttS, 1e-9) };
  } finally {
    client?.close();
    child.stdin.end();
    if (child.exitCode === null) child.kill();
  }
}
