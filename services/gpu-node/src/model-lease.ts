/**
 * The model lease of a gpu-node: the node serves one model (and layer range)
 * at a time, so when two coordinators share it, one must not load its
 * model under the other's running steps. A Load names its holder (the
 * coordinator's instance id); the lease is live while a Load or step on its
 * model runs, or ran less than `leaseTtlMs` ago; while it is live, only its
 * holders may load another model, and anyone else's Load of another model is
 * refused (LEASED) rather than swapping the model under them; a holder done
 * with it says so (GpuNode.Release), so the next may load at once. Every step
 * names the model id and layer range it was planned for
 * (ForwardRequest.model), and a step for anything else fails
 * MODEL_MISMATCH ({@link checkStageModel}), so a lapsed lease gives a named
 * error, never another model's output.
 */
import { createHash } from "node:crypto";
import { readdir, realpath, stat } from "node:fs/promises";
import { join } from "node:path";
import { Code, NodeErrorReason, RpcError, type ForwardRequest, type LoadRequest } from "@tessera/proto";
import { StepError } from "./step-error.js";

/**
 * The id of what a Load asks for: 16 hex digits of SHA-256 over the
 * checkpoint's real path, the size and mtime of it (or of each file of a
 * model folder), the layer range, embed and head. Cheap (a few stats), and
 * a file replaced on disk gets a new id. undefined when the path cannot be
 * read (the Load then fails opening it, naming the file).
 */
export async function modelIdOf(
  req: Pick<LoadRequest, "modelPath" | "layerStart" | "layerEnd" | "embed" | "head">,
): Promise<string | undefined> {
  try {
    const path = await realpath(req.modelPath);
    const st = await stat(path);
    const parts: unknown[] = [path, st.size, st.mtimeMs, req.layerStart, req.layerEnd, req.embed, req.head];
    if (st.isDirectory()) {
      for (const name of (await readdir(path)).sort()) {
        const f = await stat(join(path, name)).catch(() => undefined);
        parts.push(name, f?.size, f?.mtimeMs);
      }
    }
    return createHash("sha256").update(JSON.stringify(parts)).digest("hex").slice(0, 16);
  } catch {
    return undefined;
  }
}

/** A holder's name in messages: its id, or "an anonymous client" for "". */
function holderName(holder: string): string {
  return holder === "" ? "an anonymous client" : `coordinator ${JSON.stringify(holder)}`;
}

/** What the lease covered before a claim, restored when the claimed Load fails. */
interface LeaseState {
  modelId: string | undefined;
  range: string;
  holders: Set<string>;
  lastUsed: number;
}

/** The lease of one gpu-node's model slot (see the file comment). */
export class NodeLease {
  private modelId: string | undefined;
  /** "[start, end)" of the leased model, for messages. */
  private range = "";
  private holders = new Set<string>();
  private lastUsed = -Infinity;
  /** Loads and steps running on the lease. */
  private busy = 0;

  /**
   * @param ttlMs how long the lease stays live after its last Load or step
   * @param self this node's address (host:port), named in refusals
   * @param now the clock (ms)
   */
  constructor(
    private readonly ttlMs: number,
    private readonly self: () => string,
    private readonly now: () => number = Date.now,
  ) {}

  /** The lease's holders (for Info), live or not. */
  get holderIds(): string[] {
    return [...this.holders];
  }

  /** Whether a Load or step runs on the lease, or one ended less than ttlMs ago. */
  live(): boolean {
    return this.busy > 0 || this.now() - this.lastUsed < this.ttlMs;
  }

  /**
   * A Load by `holder` of `modelId` (layers "[start, end)") starts: joins
   * the lease when it is for the same model, takes it when it is not live
   * or `holder` is its only holder, and counts as running until
   * {@link end}. Returns what to call if the Load fails (restores the lease
   * it replaced, unless another Load claimed it since).
   * @throws RpcError FAILED_PRECONDITION, reason LEASED, naming this node,
   *   the model and range held and its holders, when another holder's lease
   *   is live.
   */
  claim(holder: string, modelId: string | undefined, range: string): () => void {
    if (modelId !== undefined && modelId === this.modelId) {
      this.holders.add(holder);
      this.busy++;
      return () => undefined;
    }
    const others = [...this.holders].filter((h) => h !== holder);
    if (others.length > 0 && this.live()) {
      throw new RpcError(
        Code.FAILED_PRECONDITION,
        `gpu-node ${this.self()} holds model ${this.modelId ?? "(loading)"} layers ${this.range} for ` +
          `${others.map(holderName).join(", ")} (lease live: a Load or step ran less than ${this.ttlMs} ms ago); ` +
          `${holderName(holder)} may load another model once it lapses`,
        { reason: NodeErrorReason.LEASED },
      );
    }
    const before: LeaseState = {
      modelId: this.modelId,
      range: this.range,
      holders: this.holders,
      lastUsed: this.lastUsed,
    };
    this.modelId = modelId;
    this.range = range;
    this.holders = new Set([holder]);
    this.busy++;
    return () => {
      if (this.modelId !== modelId) return;
      ({ modelId: this.modelId, range: this.range, holders: this.holders, lastUsed: this.lastUsed } = before);
    };
  }

  /**
   * GpuNode.Release: `holder` is done with the lease (the model stays
   * loaded); once no holder is left, anyone may load another model.
   */
  release(holder: string): void {
    this.holders.delete(holder);
  }

  /** A Load or step on the lease starts (it stays live until {@link end}). */
  begin(): void {
    this.busy++;
  }

  /** A Load or step on the lease ended: the TTL runs from now. */
  end(): void {
    this.busy--;
    this.lastUsed = this.now();
  }
}

/**
 * Checks that the loaded model is the one a step was planned for
 * (ForwardRequest.model: model id and layer range); a request naming none
 * passes.
 * @throws StepError FAILED_PRECONDITION, reason MODEL_MISMATCH, naming this
 *   node, the model and range it holds (and for whom), and what the step
 *   expected.
 */
export function checkStageModel(
  req: Pick<ForwardRequest, "model" | "stepId">,
  loaded: { modelId: string; layerStart: number; layerEnd: number },
  holders: readonly string[],
  self: string,
): void {
  const want = req.model;
  if (!want) return;
  if (want.modelId === loaded.modelId && want.layerStart === loaded.layerStart && want.layerEnd === loaded.layerEnd)
    return;
  throw new StepError(
    Code.FAILED_PRECONDITION,
    `gpu-node ${self} holds model ${loaded.modelId} layers [${loaded.layerStart}, ${loaded.layerEnd}) ` +
      `(loaded for ${holders.map(holderName).join(", ") || "no one"}), but step ${req.stepId} was planned for ` +
      `model ${want.modelId || "(none)"} layers [${want.layerStart}, ${want.layerEnd})`,
    "gpu",
    self,
    NodeErrorReason.MODEL_MISMATCH,
  );
}
