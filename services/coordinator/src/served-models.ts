/**
 * The coordinator's served-model list: the only models it opens. A request
 * (Generate, SubmitJob, a stored job) names a model by its served name, or
 * (compatibility) by the path it is served from; anything else is refused
 * before a file is touched, so a tenant cannot make the coordinator or a
 * gpu-node open a path of its choosing (issue 13).
 */
import { statSync } from "node:fs";
import { basename, extname, resolve } from "node:path";
import { ConfigError, type KvPlacement } from "@tessera/core";
import { defaultTokenizerFor } from "@tessera/model";
import { Code, RpcError } from "@tessera/proto";

/** A model to serve as a user gives it (see {@link compileServedModels}). */
export interface ServedModelOptions {
  /** What requests call it. @default the path's last name, a file's without its extension (`stories260K`) */
  name?: string;
  /** llama2.c checkpoint or Hugging Face folder (a path the coordinator and the gpu-nodes can read). */
  modelPath: string;
  /**
   * tokenizer.bin or tokenizer.json.
   * @default the coordinator's tokenizerPath, else as `tessera run` picks ({@link defaultTokenizerFor})
   */
  tokenizerPath?: string;
  /** KV placement of its prompts when a request leaves it "auto". @default "auto" */
  kv?: KvPlacement;
}

/** A served model, compiled: every field set. */
export interface ServedModel {
  readonly name: string;
  readonly modelPath: string;
  readonly tokenizerPath: string;
  readonly kv: KvPlacement;
}

/** Served names: 1-128 letters, digits, ".", "_" or "-" (never a path). */
const NAME = /^[A-Za-z0-9._-]{1,128}$/;
const KV_VALUES: readonly KvPlacement[] = ["auto", "memory", "storage"];

/** A model's default name: its file's name without the extension, or its folder's name. */
export function defaultModelName(modelPath: string): string {
  const base = basename(modelPath.replace(/\/+$/, ""));
  const isDir = statSync(modelPath, { throwIfNoEntry: false })?.isDirectory() ?? false;
  return isDir ? base : base.slice(0, base.length - extname(base).length) || base;
}

/**
 * Parses one `--model` value: `[NAME=]PATH[,tokenizer=PATH][,kv=auto|memory|storage]`
 * (NAME is taken only when the text before "=" is a name, so a path holding
 * "=" after a "/" stays a path).
 * @throws ConfigError naming `option` for an empty path or an unknown key.
 */
export function parseServedModelSpec(spec: string, option = "--model"): ServedModelOptions {
  const [head = "", ...rest] = spec.split(",");
  const eq = head.indexOf("=");
  const named = eq > 0 && NAME.test(head.slice(0, eq));
  const out: ServedModelOptions = { modelPath: named ? head.slice(eq + 1) : head };
  if (named) out.name = head.slice(0, eq);
  if (out.modelPath === "") throw new ConfigError(option, `${JSON.stringify(spec)}: no model path`);
  for (const part of rest) {
    const eqAt = part.indexOf("=");
    const [key, value] = eqAt < 0 ? [part, ""] : [part.slice(0, eqAt), part.slice(eqAt + 1)];
    if (key === "tokenizer" && value) out.tokenizerPath = value;
    else if (key === "kv" && (KV_VALUES as string[]).includes(value)) out.kv = value as KvPlacement;
    else {
      throw new ConfigError(
        option,
        `${JSON.stringify(spec)}: "${part}" is not tokenizer=PATH or kv=${KV_VALUES.join("|")} (form: [NAME=]PATH[,tokenizer=PATH][,kv=...])`,
      );
    }
  }
  return out;
}

/**
 * The served list of a coordinator's options: `modelPath` first (the
 * default model of requests that name none), then `models` (each a
 * {@link parseServedModelSpec} string or options). A model with no
 * tokenizer gets `tokenizerPath`, else {@link defaultTokenizerFor}'s.
 * Nothing is read but the paths' kind (file or folder, for the default name).
 * @throws ConfigError naming `models` for a bad name, a name served twice,
 *   or a bad kv.
 */
export function compileServedModels(o: {
  modelPath?: string | undefined;
  tokenizerPath?: string | undefined;
  models?: readonly (string | ServedModelOptions)[] | undefined;
}): readonly ServedModel[] {
  const given = [
    ...(o.modelPath ? [{ modelPath: o.modelPath }] : []),
    ...(o.models ?? []).map((m) => (typeof m === "string" ? parseServedModelSpec(m, "models") : m)),
  ];
  const byName = new Map<string, ServedModel>();
  for (const m of given) {
    if (!m.modelPath) throw new ConfigError("models", "a served model needs a path");
    const name = m.name ?? defaultModelName(m.modelPath);
    if (!NAME.test(name)) {
      throw new ConfigError("models", `${m.modelPath}: name ${JSON.stringify(name)} is not 1-128 of A-Z a-z 0-9 . _ -`);
    }
    const kv = m.kv ?? "auto";
    if (!KV_VALUES.includes(kv)) throw new ConfigError("models", `${name}: kv must be ${KV_VALUES.join(", ")}`);
    const served = Object.freeze({
      name,
      modelPath: m.modelPath,
      tokenizerPath: m.tokenizerPath ?? o.tokenizerPath ?? defaultTokenizerFor(m.modelPath),
      kv,
    });
    const twin = byName.get(name);
    if (twin) {
      // The same model given twice (e.g. as modelPath and in models) is served once.
      if (twin.modelPath === served.modelPath && twin.tokenizerPath === served.tokenizerPath) continue;
      throw new ConfigError(
        "models",
        `name "${name}" is served twice (${twin.modelPath}, ${served.modelPath}): give one a NAME= of its own`,
      );
    }
    byName.set(name, served);
  }
  return Object.freeze([...byName.values()]);
}

/** A request's text shown back to it: its JSON, cut to 80 characters. */
const echo = (s: string) => JSON.stringify(s.length > 80 ? `${s.slice(0, 77)}...` : s);

/**
 * The served model a request names: empty `model` is the default (the
 * first); otherwise a served name, or the path a model is served from
 * (compared resolved). A non-empty `tokenizer` must be the model's own.
 * Opens nothing, so an unserved path gets the same answer whether or not
 * it exists.
 * @throws RpcError NOT_FOUND naming the requested name (and nothing else of
 *   the list); INVALID_ARGUMENT for another tokenizer; FAILED_PRECONDITION
 *   when nothing is served.
 */
export function resolveServedModel(models: readonly ServedModel[], model: string, tokenizer: string): ServedModel {
  if (models.length === 0) {
    throw new RpcError(Code.FAILED_PRECONDITION, "model_path: the coordinator serves no model (start it with --model)");
  }
  let m: ServedModel | undefined = models[0];
  if (model) {
    m = models.find((x) => x.name === model) ?? models.find((x) => resolve(x.modelPath) === resolve(model));
  }
  if (!m) {
    throw new RpcError(
      Code.NOT_FOUND,
      `model_path: no served model is named ${echo(model)} (ListModels lists the served models)`,
    );
  }
  if (tokenizer && resolve(tokenizer) !== resolve(m.tokenizerPath)) {
    throw new RpcError(
      Code.INVALID_ARGUMENT,
      `tokenizer_path: model "${m.name}" is served with its own tokenizer; leave tokenizer_path empty`,
    );
  }
  return m;
}
