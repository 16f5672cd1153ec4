/**
 * Issue 5, "Done when": against the real NATS server on 127.0.0.1:4222 (a
 * random prefix), 50 jobs of 16 prompts from 3 tenants are submitted through
 * Coordinator.SubmitJob with each tenant's bearer token, to a child-process
 * cluster whose nodes register in the NATS registry. While they run, one at
 * a time and each while a job is mid-run: the memory-node is SIGKILLed (its
 * sequences move to the storage-node, KV rebuilt; it is not restarted, so
 * from then on every sequence is on the storage-node), the storage-node is
 * SIGKILLed and restarted (its sequences continue from the KV on disk), the
 * gpu-node is SIGKILLed and restarted on the same address a second later
 * (the job waits for it), and the coordinator is SIGKILLed and restarted
 * (the new one resumes the job from its checkpoint). Every job completes;
 * each has exactly its 16 results, with the tokens of an undisturbed run;
 * no result appears twice; each tenant lists, reads and cancels only its own
 * jobs, and calls without a valid token are UNAUTHENTICATED.
 */
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { generateRequest, type PromptSpec, type Role } from "@tessera/core";
import { JobStore, connectNats, registryBucket, type JobState } from "@tessera/nats";
import { Code, Coordinator, createClient, type Client, type GenerateEvent, type Result } from "@tessera/proto";
import type { LocalCluster, RoleProcess } from "@tessera/cli";
import { STORY_OPENINGS, tempDir, collect, failure } from "@tessera/testing";
import { startTestCluster } from "./helpers.js";

const SERVERS = process.env["TESSERA_NATS"] ?? "127.0.0.1:4222";
const enc = new TextEncoder();

const TENANTS = ["alpha", "beta", "gamma"] as const;
type Tenant = (typeof TENANTS)[number];
const JOBS = 50;
const PROMPTS = 16;
const MAX_TOKENS = 24;
/** Words that make every prompt of every job different (a result given to the wrong job or id shows). */
const NAMES = ["Lily", "Ben", "Mia", "Max", "Sue", "Tim", "Anna", "Joe", "Kim", "Bob"];
const ANIMALS = ["dog", "cat", "bird", "frog", "duck"];
const THINGS = [
  "ball",
  "tree",
  "cake",
  "boat",
  "hat",
  "fish",
  "car",
  "flower",
  "moon",
  "book",
  "cup",
  "box",
  "star",
  "kite",
  "shoe",
  "sun",
];

/** One submitted job: its id, owner, format and prompts (ids unique across all jobs). */
interface JobSpec {
  id: string;
  tenant: Tenant;
  format: "tessera" | "openai";
  prompts: PromptSpec[];
}

/** Job `j`: tenants in turn (17/17/16), every fifth in the OpenAI Batch format. */
function jobSpec(j: number): JobSpec {
  const id = `job${String(j).padStart(2, "0")}`;
  const format = j % 5 === 4 ? "openai" : "tessera";
  const prompts = Array.from({ length: PROMPTS }, (_, i) => ({
    line: i + 1,
    id: `${id}-${format === "openai" ? "r" : "p"}${i}`,
    prompt: `${STORY_OPENINGS[(i + j) % STORY_OPENINGS.length]} ${NAMES[j % 10]} and the ${ANIMALS[Math.floor(j / 10)]} saw a ${THINGS[i]}`,
  }));
  return { id, tenant: TENANTS[j % TENANTS.length]!, format, prompts };
}

/** The job's input file: Tessera JSONL (sampling from SubmitJob) or OpenAI Batch lines (their own). */
function inputFile(s: JobSpec): string {
  const lines = s.prompts.map((p) =>
    s.format === "openai"
      ? {
          custom_id: p.id,
          method: "POST",
          url: "/v1/completions",
          body: { model: "stories260K.bin", prompt: p.prompt, max_tokens: MAX_TOKENS, temperature: 0 },
        }
      : { id: p.id, prompt: p.prompt },
  );
  return lines.map((l) => JSON.stringify(l)).join("\n") + "\n";
}

/** `s` as a regular expression that matches it literally. */
const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/**
 * Every line the coordinator process writes to stderr, across restarts
 * (the cluster keeps only a tail of each process's log).
 */
class ProcessLog {
  readonly lines: string[] = [];
  /** When each line arrived (Date.now()). */
  readonly times: number[] = [];

  /** Follows `p`'s stderr from now on. */
  attach(p: RoleProcess): void {
    let partial = "";
    p.child.stderr!.on("data", (chunk: string) => {
      const parts = (partial + chunk).split("\n");
      partial = parts.pop()!;
      this.lines.push(...parts);
      for (const _ of parts) this.times.push(Date.now());
    });
  }

  /**
   * The first line at index >= `from` matching `re`, waiting up to `ms`.
   * @throws Error naming `what` on timeout.
   */
  async waitFor(what: string, re: RegExp, from: number, ms = 120_000): Promise<{ index: number; m: RegExpExecArray }> {
    const deadline = Date.now() + ms;
    for (let i = from; ;) {
      for (; i < this.lines.length; i++) {
        const m = re.exec(this.lines[i]!);
        if (m) return { index: i, m };
      }
      if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what} in the coordinator log`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** Lines at index >= `from` matching `re`. */
  since(from: number, re: RegExp): string[] {
    return this.lines.slice(from).filter((l) => re.test(l));
  }
}

/** Waits for job `id` to end (watched in the JobStore, not through a coordinator that may be down). */
async function ended(store: JobStore, id: string): Promise<JobState> {
  let last: JobState | undefined;
  for await (const s of store.watch(id)) last = s;
  return last!;
}

/** A direct Generate with `token`, collected into results by prompt id. @throws RpcError when the call fails. */
async function generateAll(address: string, token: string, prompts: PromptSpec[]): Promise<Map<string, Result>> {
  const client = createClient(Coordinator, address, {}, { token });
  const out = new Map<string, Result>();
  try {
    const stream = client.generate(generateRequest(prompts, { maxTokens: MAX_TOKENS })) as AsyncIterable<GenerateEvent>;
    for await (const ev of stream) if (ev.event.case === "result") out.set(ev.event.value.id, ev.event.value);
  } finally {
    client.close();
  }
  return out;
}

test("50 jobs of 3 tenants complete with undisturbed tokens while a memory-, a storage-, the gpu-node and the coordinator are killed in turn", async (t: TestContext) => {
  const t0 = Date.now();
  const elapsed = () => `${((Date.now() - t0) / 1000).toFixed(1)} s`;
  const prefix = `t${randomBytes(4).toString("hex")}`;
  const dir = await tempDir();
  const tokens: Record<Tenant | "ops", string> = {
    alpha: randomBytes(16).toString("hex"),
    beta: randomBytes(16).toString("hex"),
    gamma: randomBytes(16).toString("hex"),
    ops: randomBytes(16).toString("hex"),
  };
  const tokensFile = join(dir.path, "tokens.yaml");
  await writeFile(
    tokensFile,
    "tokens:\n" +
      TENANTS.map((tenant) => `  - { tenant: ${tenant}, token: "${tokens[tenant]}" }\n`).join("") +
      `  - { tenant: ops, token: "${tokens.ops}", admin: true }\n`,
  );
  const nc = await connectNats({ servers: SERVERS, name: "jobs-under-failures-test" });
  const store = await JobStore.open(nc, { prefix });
  let cluster: LocalCluster | undefined;
  const log = new ProcessLog();
  const clients: Client<typeof Coordinator>[] = [];
  t.after(async () => {
    for (const c of clients) c.close();
    await cluster?.stop();
    await store.destroy();
    const jsm = await jetstreamManager(nc);
    await jsm.streams.delete(`KV_${registryBucket(prefix)}`).catch(() => undefined);
    await nc.close();
    await dir.remove();
  });

  cluster = await startTestCluster({
    nats: { servers: SERVERS, prefix },
    flags: {
      coordinator: [
        "--tokens",
        tokensFile,
        // A memory-node failing for 1 s is lost: its sequences move.
        "--failover",
        "1000",
        // Registry heartbeats may stop for 10 s (a storage- or gpu-node
        // restarting) before the node is lost: a restarted storage-node
        // keeps its sequences, whose KV is on its disk.
        "--node-lost-after",
        "10000",
        // How long a step waits for a gpu- or storage-node to come back.
        "--retry-timeout",
        "60000",
      ],
      // f32 activations on the wire: no f16 rounding, whose effect could
      // differ between a KV cache rebuilt by one prefill (after a move) and
      // one built step by step.
      gpu: ["--wire-dtype", "f32"],
    },
  });
  log.attach(cluster.node("coordinator"));
  const client = (token?: string) => {
    const c = createClient(Coordinator, cluster!.address, {}, token === undefined ? {} : { token });
    clients.push(c);
    return c;
  };
  const as = Object.fromEntries(
    (["alpha", "beta", "gamma", "ops"] as const).map((who) => [who, client(tokens[who])]),
  ) as Record<Tenant | "ops", Client<typeof Coordinator>>;

  const specs = Array.from({ length: JOBS }, (_, j) => jobSpec(j));
  const allPrompts = specs.flatMap((s) => s.prompts);

  // The undisturbed run: every prompt in one direct Generate (the admin's
  // token) on this same cluster before anything is killed — the same
  // nodes, model and flags, without the cost of a second cluster on the
  // test machine's cores. Greedy: a prompt's tokens do not depend on the
  // batch it runs in.
  const want = await generateAll(cluster.address, tokens.ops, allPrompts);
  assert.equal(want.size, allPrompts.length);
  for (const r of want.values()) assert.equal(r.error, "", `reference ${r.id}: ${r.error}`);
  const refSeconds = (Date.now() - t0) / 1000;

  // Submit all 50, tenants in turn, with each one's own token.
  for (const s of specs) {
    const job = await as[s.tenant].submitJob({
      jobId: s.id,
      input: enc.encode(inputFile(s)),
      format: s.format,
      fileName: `${s.id}.jsonl`,
      sampling: { maxTokens: MAX_TOKENS },
    });
    assert.equal(job.tenant, s.tenant, `${s.id}: its tenant comes from the token`);
    assert.equal(job.promptsTotal, PROMPTS);
  }
  t.diagnostic(
    `${elapsed()}: reference run of ${allPrompts.length} prompts took ${refSeconds.toFixed(1)} s; ${JOBS} jobs submitted`,
  );

  // The kills, in turn. Each first times two undisturbed jobs (from their
  // sequences placed on attention nodes to their completion), then hits the
  // next job half that time after its sequences are placed — in decode —
  // if it is still running (else tries the next one), and waits for that
  // job to end before the next kill.
  const eventRe = /^job (job\d\d): placed \d+ sequence\(s\)|^jobs: job (job\d\d) completed/;
  const kills: { role: string; job: string; at: string }[] = [];
  let from = log.lines.length;
  const killDuring = async (role: Role, action: () => Promise<void>) => {
    const placedAt = new Map<string, number>();
    const durations: number[] = [];
    for (;;) {
      const { index, m } = await log.waitFor(`a job placed or completed (before the ${role} kill)`, eventRe, from);
      from = index + 1;
      const at = log.times[index]!;
      if (m[2] !== undefined) {
        const placed = placedAt.get(m[2]);
        if (placed !== undefined) durations.push(at - placed);
        continue;
      }
      const victim = m[1]!;
      if (placedAt.has(victim)) continue;
      placedAt.set(victim, at);
      if (durations.length < 2) continue;
      const midRun = Math.min(...durations.slice(-2)) / 2;
      await new Promise((r) => setTimeout(r, Math.max(0, at + midRun - Date.now())));
      const before = (await store.get(victim))!;
      if (before.status !== "running") continue;
      const killIndex = log.lines.length;
      const killedAfter = Date.now() - at;
      await action();
      kills.push({ role, job: victim, at: elapsed() });
      t.diagnostic(
        `${elapsed()}: ${role} killed ${killedAfter} ms after ${victim}'s sequences were placed ` +
          `(undisturbed jobs took ${durations.slice(-2).join(", ")} ms; ${before.promptsDone}/${before.promptsTotal} prompts stored)`,
      );
      const end = await ended(store, victim);
      assert.equal(end.status, "completed", `${victim} after the ${role} kill: ${end.error}`);
      assert.equal(end.promptsFailed, 0, `${victim} after the ${role} kill: no prompt failed`);
      t.diagnostic(`${elapsed()}: ${victim} completed (attempts ${end.attempts})`);
      from = log.lines.length;
      return { victim, killIndex, end };
    }
  };

  // (1) The memory-node: its sequences of the running job move to the
  // storage-node (KV rebuilt by prefill). Not restarted: from now on the
  // storage-node holds every sequence.
  const memory = cluster.node("memory").address;
  const k1 = await killDuring("memory", () => cluster!.kill("memory"));
  const moved = log.since(k1.killIndex, new RegExp(`^job ${k1.victim}: plan \\d+ .*; (\\d+) sequence\\(s\\) move`));
  assert.ok(
    moved.length > 0,
    `${k1.victim}'s sequences were re-placed off memory-node ${memory}:\n${log.lines.slice(k1.killIndex).join("\n")}`,
  );
  t.diagnostic(`re-placed: ${moved.join(" | ")}`);

  // (2) The storage-node, killed and started again at once on its address
  // with its data directory: the sequences wait and go on from the KV on disk.
  const storage = cluster.node("storage").address;
  const k2 = await killDuring("storage", async () => {
    await cluster!.kill("storage");
    await cluster!.restart("storage");
  });
  const waited = log
    .since(
      k2.killIndex,
      new RegExp(`^step \\d+: storage-node ${esc(storage)}: .*; its (\\d+) sequence\\(s\\) wait for it$`),
    )
    .reduce((n, l) => n + Number(/its (\d+) sequence/.exec(l)![1]), 0);
  const back = log.since(k2.killIndex, new RegExp(`^${k2.victim}-\\S+: storage-node ${esc(storage)} back$`));
  assert.ok(
    waited > 0,
    `${k2.victim}'s sequences waited for the storage-node:\n${log.lines.slice(k2.killIndex).join("\n")}`,
  );
  assert.equal(
    back.length,
    waited,
    `each sequence that waited came back on the storage-node:\n${log.lines.slice(k2.killIndex).join("\n")}`,
  );
  assert.deepEqual(log.since(k2.killIndex, /was lost on storage-node/), [], "no KV cache was lost with the restart");
  t.diagnostic(`${waited} sequence(s) waited for the storage-node and went on from its KV on disk`);

  // The memory-node back (same address, empty): the coordinator takes it
  // again from the registry, and the later jobs run faster on it.
  const rejoin = log.lines.length;
  await cluster.restart("memory");
  await log.waitFor("the memory-node back", new RegExp(`^cluster: memory-node ${esc(memory)} (back|joined) `), rejoin);

  // (3) The gpu-node, started again on its address a second later: the step waits, the model is loaded again.
  const k3 = await killDuring("gpu", async () => {
    await cluster!.kill("gpu");
    await new Promise((r) => setTimeout(r, 1000));
    await cluster!.restart("gpu");
  });
  t.diagnostic(`gpu retries: ${log.since(k3.killIndex, /retrying in/).length}`);

  // (4) The coordinator, killed and started again: the new one's job worker
  // gets the job again (after the queue's ack wait) and resumes it from the
  // checkpoint of stored results.
  const k4 = await killDuring("coordinator", async () => {
    await cluster!.kill("coordinator");
    await cluster!.restart("coordinator");
    log.attach(cluster!.node("coordinator"));
  });
  assert.ok(k4.end.attempts >= 2, `${k4.victim} was claimed again by the restarted coordinator`);
  assert.equal(kills.length, 4);

  // Every job completes.
  const ends = await Promise.all(specs.map((s) => ended(store, s.id)));
  for (const e of ends) {
    assert.equal(e.status, "completed", `${e.id}: ${e.error}`);
    assert.equal(e.promptsDone, PROMPTS, e.id);
    assert.equal(e.promptsFailed, 0, e.id);
  }
  const totalSeconds = (Date.now() - t0) / 1000;

  // Every result, read with its tenant's token: 16 per job, each prompt
  // once, with the undisturbed run's tokens; no result twice anywhere.
  const seen = new Set<string>();
  let completionTokens = 0;
  for (const s of specs) {
    const lines = (await collect(as[s.tenant].getResults({ id: s.id }))).map((l) => JSON.parse(l.line));
    assert.equal(lines.length, PROMPTS, `${s.id}: ${PROMPTS} result lines`);
    const ids = lines.map((l) => (s.format === "openai" ? l.custom_id : l.id) as string);
    assert.deepEqual([...ids].sort(), s.prompts.map((p) => p.id).sort(), `${s.id}: each of its prompts exactly once`);
    for (const [k, l] of lines.entries()) {
      const id = ids[k]!;
      assert.ok(!seen.has(id), `result ${id} appears twice`);
      seen.add(id);
      const w = want.get(id)!;
      if (s.format === "openai") {
        assert.equal(l.error, null, id);
        assert.deepEqual(
          l.response.body.choices,
          [{ text: w.completion, index: 0, logprobs: null, finish_reason: w.finishReason }],
          `${id}: completion`,
        );
        assert.deepEqual(
          l.response.body.usage,
          {
            prompt_tokens: w.promptTokenIds.length,
            completion_tokens: w.completionTokenIds.length,
            total_tokens: w.promptTokenIds.length + w.completionTokenIds.length,
          },
          `${id}: usage`,
        );
      } else {
        assert.equal(l.prompt, s.prompts.find((p) => p.id === id)!.prompt, `${id}: prompt`);
        assert.deepEqual(l.completion_token_ids, w.completionTokenIds, `${id}: tokens`);
        assert.equal(l.completion, w.completion, `${id}: completion`);
        assert.equal(l.finish_reason, w.finishReason, `${id}: finish_reason`);
      }
      completionTokens += w.completionTokenIds.length;
    }
  }
  assert.equal(seen.size, JOBS * PROMPTS);
  assert.equal(
    ends.reduce((n, e) => n + e.completionTokens, 0),
    completionTokens,
    "the jobs' token counts are the results'",
  );

  // Tenants apart: each lists exactly its own jobs; another's is NOT_FOUND.
  for (const tenant of TENANTS) {
    const own = specs.filter((s) => s.tenant === tenant).map((s) => s.id);
    assert.deepEqual((await as[tenant].listJobs({})).jobs.map((j) => j.id).sort(), own, `${tenant} lists its own`);
    const other = specs.find((s) => s.tenant !== tenant)!;
    assert.deepEqual((await as[tenant].listJobs({ tenant: other.tenant })).jobs, []);
    for (const call of [
      as[tenant].getJob({ id: other.id }),
      as[tenant].cancelJob({ id: other.id }),
      collect(as[tenant].getResults({ id: other.id })),
      collect(as[tenant].watchJob({ id: other.id })),
    ]) {
      const f = await failure(call);
      assert.equal(f.code, Code.NOT_FOUND, `${tenant} on ${other.id}: ${f.message}`);
    }
    assert.equal((await as.ops.getJob({ id: other.id })).status, "completed", "the cancel changed nothing");
  }
  assert.equal((await as.ops.listJobs({})).jobs.length, JOBS, "the admin lists every job");
  for (const c of [client(), client("not-a-known-token-0123456789")]) {
    for (const call of [
      c.listJobs({}),
      c.getJob({ id: specs[0]!.id }),
      c.submitJob({ input: enc.encode(inputFile(specs[0]!)) }),
    ]) {
      const f = await failure(call);
      assert.equal(f.code, Code.UNAUTHENTICATED, f.message);
    }
  }
  t.diagnostic(
    `${JOBS} jobs (${TENANTS.map((tn) => `${tn} ${specs.filter((s) => s.tenant === tn).length}`).join(", ")}), ` +
      `${seen.size} prompts, ${completionTokens} completion tokens, kills ${kills.map((k) => `${k.role}@${k.job} ${k.at}`).join(", ")}; ` +
      `all done in ${totalSeconds.toFixed(1)} s`,
  );
});
