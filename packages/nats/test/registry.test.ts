/**
 * The node registry against the real NATS server on 127.0.0.1:4222: a node
 * registers and heartbeats; a watcher reports joined, lost (heartbeats
 * stop without a deregister), back, left (deregister); stale records are
 * not reported; a bucket name clash and an unreachable server give errors
 * naming the servers and the bucket. Each test uses its own prefix and
 * deletes its bucket.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import {
  NatsError,
  connectNats,
  openRegistryBucket,
  registerNode,
  registryBucket,
  registryKey,
  watchRegistry,
  type NodeRecord,
  type RegistryEvent,
} from "@tessera/nats";
import { freePort } from "@tessera/testing";

const SERVERS = process.env.TESSERA_NATS ?? "127.0.0.1:4222";

/** A fresh prefix whose bucket is deleted after the test. */
async function prefixFor(t: TestContext): Promise<string> {
  const prefix = `t${randomBytes(5).toString("hex")}`;
  const nc = await connectNats({ servers: SERVERS, name: "registry-test" });
  t.after(async () => {
    const jsm = await jetstreamManager(nc);
    await jsm.streams.delete(`KV_${registryBucket(prefix)}`).catch(() => undefined);
    await nc.close();
  });
  return prefix;
}

/** Collects a watcher's events; `next(kind, address)` waits for the first such event not yet taken. */
function eventLog() {
  const events: RegistryEvent[] = [];
  const waiters: (() => void)[] = [];
  return {
    events,
    onEvent(e: RegistryEvent) {
      events.push(e);
      for (const w of waiters.splice(0)) w();
    },
    async next(kind: RegistryEvent["kind"], address: string, timeoutMs = 10_000): Promise<RegistryEvent> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const e = events.find((x) => x.kind === kind && x.address === address);
        if (e) {
          events.splice(events.indexOf(e), 1);
          return e;
        }
        if (Date.now() > deadline) {
          throw new Error(
            `no ${kind} of ${address} in ${timeoutMs} ms; saw ${JSON.stringify(events.map((x) => [x.kind, x.address]))}`,
          );
        }
        await new Promise<void>((resolve) => {
          waiters.push(resolve);
          setTimeout(resolve, 100);
        });
      }
    },
  };
}

test("a node registers and heartbeats; a watcher sees joined, then left on deregister", async (t) => {
  const prefix = await prefixFor(t);
  const log = eventLog();
  const watcher = await watchRegistry({ nats: SERVERS, prefix, heartbeatMs: 100, onEvent: log.onEvent, log: () => {} });
  t.after(() => watcher.stop());
  const profile = { role: "memory", pricePerHour: 0.5, cores: 2 };
  const reg = await registerNode({
    nats: SERVERS,
    prefix,
    role: "memory",
    address: "127.0.0.1:50001",
    pricePerHour: 0.5,
    profile,
    heartbeatMs: 100,
  });
  t.after(() => reg.deregister().catch(() => undefined));
  assert.equal(reg.key, "memory.127.0.0.1_50001");
  assert.equal(reg.bucket, `${prefix}-nodes`);

  const joined = await log.next("joined", "127.0.0.1:50001");
  assert.equal(joined.role, "memory");
  assert.equal(joined.record.pricePerHour, 0.5);
  assert.deepEqual(joined.record.profile, profile);

  // Heartbeats move heartbeatAt forward in the bucket.
  const nc = await connectNats({ servers: SERVERS, name: "registry-test-reader" });
  t.after(() => nc.close());
  const kv = await new Kvm(nc).open(registryBucket(prefix));
  const first = (await kv.get(reg.key))!.json<NodeRecord>();
  await new Promise((r) => setTimeout(r, 400));
  const later = (await kv.get(reg.key))!.json<NodeRecord>();
  assert.equal(later.nodeId, first.nodeId);
  assert.equal(later.startedAt, first.startedAt);
  assert.ok(
    Date.parse(later.heartbeatAt) > Date.parse(first.heartbeatAt),
    `${later.heartbeatAt} after ${first.heartbeatAt}`,
  );
  assert.deepEqual(
    watcher.nodes().map((n) => [n.record.address, n.state]),
    [["127.0.0.1:50001", "up"]],
  );

  await reg.deregister();
  const left = await log.next("left", "127.0.0.1:50001");
  assert.equal(left.role, "memory");
  assert.equal(await kv.get(reg.key).then((e) => e?.operation ?? "none"), "DEL");
  assert.deepEqual(watcher.nodes(), []);
  assert.deepEqual(
    log.events.filter((e) => e.kind === "lost"),
    [],
  );
});

test("a node whose heartbeats stop is lost, and back when they resume; stale records are not reported", async (t) => {
  const prefix = await prefixFor(t);
  const nc = await connectNats({ servers: SERVERS, name: "registry-test" });
  t.after(() => nc.close());
  const kv = await openRegistryBucket(nc, prefix);
  // A record a node left behind long ago (it died without deregistering).
  const old = new Date(Date.now() - 60_000).toISOString();
  const stale: NodeRecord = {
    role: "storage",
    address: "127.0.0.1:50009",
    pricePerHour: 0,
    startedAt: old,
    heartbeatAt: old,
    nodeId: "stale",
  };
  await kv.put(registryKey("storage", stale.address), JSON.stringify(stale));
  const lostAfterMs = 600;
  // Stale by the NATS server's clock (the only one the watcher trusts): not
  // written for longer than lostAfterMs when the watch starts.
  await new Promise((r) => setTimeout(r, lostAfterMs + 200));

  const log = eventLog();
  const watcher = await watchRegistry({
    nats: nc,
    prefix,
    heartbeatMs: 100,
    lostAfterMs,
    onEvent: log.onEvent,
    log: () => {},
  });
  t.after(() => watcher.stop());
  assert.deepEqual(watcher.nodes(), [], "the stale record is not a node");

  // A "node" heartbeating by hand, so the test controls when it stops.
  const address = "127.0.0.1:50002";
  const record: NodeRecord = { ...stale, role: "gpu", address, nodeId: "n1", startedAt: new Date().toISOString() };
  const beat = () =>
    kv.put(registryKey("gpu", address), JSON.stringify({ ...record, heartbeatAt: new Date().toISOString() }));
  await beat();
  await log.next("joined", address);
  let timer = setInterval(() => void beat(), 100);
  t.after(() => clearInterval(timer));
  await new Promise((r) => setTimeout(r, 3 * lostAfterMs));
  assert.equal(log.events.filter((e) => e.kind === "lost").length, 0, "no lost while heartbeating");

  clearInterval(timer);
  const stoppedAt = Date.now();
  const lost = await log.next("lost", address);
  const waited = Date.now() - stoppedAt;
  assert.ok(waited >= lostAfterMs - 150, `lost after ${waited} ms, not before ~${lostAfterMs} ms`);
  assert.match(lost.reason, /no heartbeat/);
  assert.deepEqual(
    watcher.nodes().map((n) => [n.record.address, n.state]),
    [[address, "lost"]],
  );

  timer = setInterval(() => void beat(), 100);
  await log.next("back", address);
  assert.deepEqual(
    watcher.nodes().map((n) => [n.record.address, n.state]),
    [[address, "up"]],
  );
  clearInterval(timer);

  // The stale node heartbeats again: now it joins.
  await kv.put(
    registryKey("storage", stale.address),
    JSON.stringify({ ...stale, heartbeatAt: new Date().toISOString() }),
  );
  await log.next("joined", stale.address);
});

test("a watcher started after nodes registered reports them before it resolves", async (t) => {
  const prefix = await prefixFor(t);
  const regs = await Promise.all(
    ["127.0.0.1:50011", "127.0.0.1:50012"].map((address) =>
      registerNode({ nats: SERVERS, prefix, role: "memory", address, heartbeatMs: 200 }),
    ),
  );
  t.after(() => Promise.all(regs.map((r) => r.deregister().catch(() => undefined))));
  const seen: string[] = [];
  const watcher = await watchRegistry({
    nats: SERVERS,
    prefix,
    heartbeatMs: 200,
    onEvent: (e) => seen.push(`${e.kind} ${e.address}`),
  });
  t.after(() => watcher.stop());
  assert.deepEqual(seen.sort(), ["joined 127.0.0.1:50011", "joined 127.0.0.1:50012"]);
});

test("a bucket name clash and an unreachable server give errors naming the servers and the bucket", async (t) => {
  const prefix = await prefixFor(t);
  const nc = await connectNats({ servers: SERVERS, name: "registry-test" });
  t.after(() => nc.close());
  const jsm = await jetstreamManager(nc);
  // A stream with the bucket's stream name that is not a key-value bucket.
  await jsm.streams.add({ name: `KV_${prefix}-nodes`, subjects: [`${prefix}.other`] });
  await assert.rejects(
    registerNode({ nats: SERVERS, prefix, role: "gpu", address: "127.0.0.1:50003" }),
    (e: unknown) =>
      e instanceof NatsError &&
      e.message.includes("127.0.0.1:4222") &&
      e.message.includes(`"${prefix}-nodes"`) &&
      /not a key-value bucket/.test(e.message),
  );
  await assert.rejects(watchRegistry({ nats: SERVERS, prefix, onEvent: () => {} }), /not a key-value bucket/);

  await assert.rejects(
    registerNode({ nats: "127.0.0.1:1", prefix, role: "gpu", address: "127.0.0.1:50003" }),
    (e: unknown) =>
      e instanceof NatsError && e.servers === "127.0.0.1:1" && /NATS at 127\.0\.0\.1:1: cannot connect/.test(e.message),
  );
  await assert.rejects(
    connectNats({ servers: "127.0.0.1:1,127.0.0.1:2", name: "x", timeoutMs: 1000 }),
    /NATS at 127\.0\.0\.1:1,127\.0\.0\.1:2: cannot connect/,
  );
});

test("a NATS server restart: nobody is reported lost while it is down, and heartbeats resume after", async (t) => {
  // A private server (the shared one on 4222 must stay up), JetStream data on disk so the bucket survives.
  const dir = await mkdtemp(join(tmpdir(), "tessera-nats-"));
  const port = await freePort();
  const servers = `127.0.0.1:${port}`;
  const start = async () => {
    const p = spawn("nats-server", ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", dir], { stdio: "ignore" });
    for (let i = 0; i < 100; i++) {
      const up = await connectNats({ servers, name: "probe", timeoutMs: 200 }).then(
        (nc) => nc.close().then(() => true),
        () => false,
      );
      if (up) return p;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`nats-server did not start on ${servers}`);
  };
  let server = await start();
  t.after(async () => {
    server.kill("SIGKILL");
    await rm(dir, { recursive: true, force: true });
  });
  const log = eventLog();
  const lostAfterMs = 600;
  const reg = await registerNode({
    nats: servers,
    role: "gpu",
    address: "127.0.0.1:50021",
    heartbeatMs: 100,
    log: () => {},
  });
  const watcher = await watchRegistry({
    nats: servers,
    heartbeatMs: 100,
    lostAfterMs,
    onEvent: log.onEvent,
    log: () => {},
  });
  t.after(() => watcher.stop());
  t.after(() => reg.deregister().catch(() => undefined));
  await log.next("joined", "127.0.0.1:50021");

  server.kill("SIGTERM");
  await new Promise((r) => server.once("exit", r));
  await new Promise((r) => setTimeout(r, 3 * lostAfterMs));
  assert.equal(log.events.length, 0, `nothing reported while NATS is down: ${JSON.stringify(log.events)}`);
  server = await start();

  // Heartbeats reach the bucket again.
  const nc = await connectNats({ servers, name: "registry-test-reader" });
  t.after(() => nc.close());
  const kv = await new Kvm(nc).open(registryBucket());
  const restartedAt = Date.now();
  for (let i = 0; ; i++) {
    const r = (await kv.get(reg.key))?.json<NodeRecord>();
    if (r && Date.parse(r.heartbeatAt) > restartedAt) break;
    assert.ok(i < 200, "no heartbeat after the restart");
    await new Promise((r) => setTimeout(r, 50));
  }
  await new Promise((r) => setTimeout(r, 2 * lostAfterMs));
  assert.deepEqual(
    log.events.filter((e) => e.kind === "lost"),
    [],
  );
  assert.deepEqual(
    watcher.nodes().map((n) => n.state),
    ["up"],
  );
  await reg.deregister();
  await log.next("left", "127.0.0.1:50021");
});

test("a node whose clock runs behind joins: the watcher judges records by the NATS server's time, not the node's", async (t) => {
  const prefix = await prefixFor(t);
  const nc = await connectNats({ servers: SERVERS, name: "registry-test-skew" });
  t.after(() => nc.close());
  const kv = await openRegistryBucket(nc, prefix);
  const log = eventLog();
  const watcher = await watchRegistry({
    nats: nc,
    prefix,
    heartbeatMs: 100,
    lostAfterMs: 600,
    onEvent: log.onEvent,
    log: () => {},
  });
  t.after(() => watcher.stop());
  // Its clock is 5 s behind: every heartbeatAt it writes looks 5 s old.
  const behind = new Date(Date.now() - 5000).toISOString();
  const address = "127.0.0.1:50011";
  await kv.put(
    registryKey("memory", address),
    JSON.stringify({
      role: "memory",
      address,
      pricePerHour: 0,
      startedAt: behind,
      heartbeatAt: behind,
      nodeId: "skew",
    }),
  );
  const joined = await log.next("joined", address);
  assert.equal(joined.role, "memory");
});

test("a watcher that was itself paused declares nobody lost: nodes get a fresh lostAfterMs, and a dead one is lost after it", async (t) => {
  const prefix = await prefixFor(t);
  const nc = await connectNats({ servers: SERVERS, name: "registry-test" });
  t.after(() => nc.close());
  const kv = await openRegistryBucket(nc, prefix);
  // The watcher's clock: real time plus a jump the test makes, as a
  // SIGSTOPped process sees its monotonic clock move on when it resumes.
  let jumpMs = 0;
  const lostAfterMs = 600;
  const lines: string[] = [];
  const log = eventLog();
  const watcher = await watchRegistry({
    nats: nc,
    prefix,
    heartbeatMs: 100,
    lostAfterMs,
    onEvent: log.onEvent,
    log: (l) => lines.push(l),
    now: () => performance.now() + jumpMs,
  });
  t.after(() => watcher.stop());
  const addresses = ["127.0.0.1:50011", "127.0.0.1:50012"];
  const beat = (address: string) =>
    kv.put(
      registryKey("gpu", address),
      JSON.stringify({
        role: "gpu",
        address,
        pricePerHour: 0,
        startedAt: new Date().toISOString(),
        heartbeatAt: new Date().toISOString(),
        nodeId: address,
      } satisfies NodeRecord),
    );
  await Promise.all(addresses.map(beat));
  for (const a of addresses) await log.next("joined", a);
  let beating = [...addresses];
  // A put still in flight when the test closes the connection is not a failure.
  const timer = setInterval(() => beating.forEach((a) => void beat(a).catch(() => undefined)), 100);
  t.after(() => clearInterval(timer));
  await new Promise((r) => setTimeout(r, 300));

  // Paused for 20 s: its next check finds every heartbeat 20 s old.
  jumpMs += 20_000;
  await new Promise((r) => setTimeout(r, 3 * lostAfterMs));
  assert.deepEqual(
    log.events.filter((e) => e.kind === "lost").map((e) => e.address),
    [],
    "nobody is lost after the watcher's own pause",
  );
  assert.ok(
    lines.some((l) => /not running for 2\d{4} ms .*fresh 600 ms/.test(l)),
    `the pause is logged: ${lines.join(" | ")}`,
  );

  // One node stops heartbeating: it is still lost, after lostAfterMs.
  beating = [addresses[0]!];
  const lost = await log.next("lost", addresses[1]!);
  assert.match(lost.reason, /no heartbeat for \d+ ms \(lost after 600 ms\)/);
  assert.deepEqual(
    watcher.nodes().map((n) => [n.record.address, n.state]),
    [
      [addresses[0], "up"],
      [addresses[1], "lost"],
    ],
  );
  clearInterval(timer);
});
