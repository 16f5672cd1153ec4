// `tessera watch`, `status` and `results` exited 0 for a job whose prompts
// failed or that failed as a whole (issue 12). Now: 1 for a job that failed
// as a whole, 3 for failed prompts or a cancelled job (as `tessera run` for
// failed prompts), 0 for queued, running and cleanly completed jobs. The
// states are written straight to the job store (needs NATS at 127.0.0.1:4222).
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { JobStore, connectNats, type JobState } from "@tessera/nats";
import { cleanEnv, tessera } from "./cli-run.js";

const SERVERS = process.env["TESSERA_NATS"] ?? "127.0.0.1:4222";

test("status, results and watch exit 1 for a failed job, 3 for failed prompts, 0 for a completed one", async (t) => {
  const prefix = `exit${randomBytes(4).toString("hex")}`;
  const nc = await connectNats({ servers: SERVERS, name: "cli-exit-codes-test" });
  const store = await JobStore.open(nc, { prefix });
  t.after(async () => {
    await store.destroy();
    await nc.close();
  });
  const input = new TextEncoder().encode('{"id":"a","prompt":"Once"}\n{"id":"b","prompt":"Upon"}\n');
  const job = async (id: string, end: Partial<JobState>) => {
    await store.submit({ jobId: id, input });
    if (Object.keys(end).length > 0) await store.update(id, (s) => ({ ...s, ...end }));
  };
  const finished = new Date().toISOString();
  await job("clean", { status: "completed", promptsDone: 2, finishedAt: finished });
  await job("prompts", { status: "completed", promptsDone: 2, promptsFailed: 1, finishedAt: finished });
  await job("whole", { status: "failed", error: "the model cannot be loaded", finishedAt: finished });
  await job("queued", {});

  const env = cleanEnv();
  const nats = ["--nats", SERVERS, "--nats-prefix", prefix];
  const codes = async (id: string) => {
    const got: Record<string, number | null> = {};
    for (const args of [
      ["status", id],
      ["status", id, "--json"],
      ["results", id],
      ["watch", id],
    ]) {
      if (id === "queued" && args[0] === "watch") continue; // waits for the end
      const r = await tessera([...args, ...nats], { env });
      got[args.join(" ").replace(id, "ID")] = r.code;
    }
    return got;
  };
  const all = (code: number, watch = true) => ({
    "status ID": code,
    "status ID --json": code,
    "results ID": code,
    ...(watch ? { "watch ID": code } : {}),
  });
  assert.deepEqual(await codes("clean"), all(0));
  assert.deepEqual(await codes("prompts"), all(3));
  assert.deepEqual(await codes("whole"), all(1));
  assert.deepEqual(await codes("queued"), all(0, false));
});
