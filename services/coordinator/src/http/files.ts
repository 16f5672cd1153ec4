/**
 * `/v1/files` as OpenAI's API reference defines it: upload (multipart
 * `file` + `purpose`, "batch" only), list (`purpose`, `limit`, `after`),
 * retrieve, content and delete. Bytes and metadata live in the
 * {@link FileStore} under the coordinator's NATS prefix, opened on its own
 * connection at the first files request. A tenant sees only its own files:
 * another's id is the same 404 as an unknown one. Without `--nats` every
 * route is a 503. File bytes are not (yet) counted towards the tenant's
 * byte quota (tenantMaxBytes).
 */
import type { FastifyInstance, FastifyRequest } from "fastify";
import multipart from "@fastify/multipart";
import { FileStore, connectNats, type StoredFile } from "@tessera/nats";
import type { CoordinatorService } from "../coordinator.js";
import { OpenAiError, invalidRequest } from "./errors.js";

/** The purposes POST /v1/files accepts. */
const PURPOSES = ["batch"];

/** OpenAI's file object. */
function fileObject(f: StoredFile) {
  return {
    id: f.id,
    object: "file",
    bytes: f.bytes,
    created_at: f.createdAt,
    filename: f.filename,
    purpose: f.purpose,
    status: "processed",
    status_details: null,
  };
}

/** The 404 of an unknown (or another tenant's) file id. */
function fileNotFound(id: string): OpenAiError {
  return new OpenAiError(404, "invalid_request_error", `No such File object: ${id.slice(0, 128)}`, "id");
}

/** Registers the files routes (in their own context, with the multipart parser). */
export async function fileRoutes(app: FastifyInstance, coordinator: CoordinatorService): Promise<void> {
  const { options } = coordinator;
  let opening: Promise<{ store: FileStore; close: () => Promise<void> }> | undefined;
  const store = async (): Promise<FileStore> => {
    const servers = options.nats;
    if (!servers)
      throw new OpenAiError(503, "service_unavailable", "/v1/files needs NATS: start the coordinator with --nats");
    opening ??= (async () => {
      const nc = await connectNats({ servers, name: "tessera-coordinator-files" });
      return { store: await FileStore.open(nc, options.natsPrefix), close: () => nc.close() };
    })().catch((err: unknown) => {
      opening = undefined;
      options.log(`http: files: ${(err as Error).message}`);
      throw new OpenAiError(503, "service_unavailable", "the file store (NATS) is unavailable");
    });
    return (await opening).store;
  };
  app.addHook("onClose", async () => {
    const o = await opening?.catch(() => undefined);
    await o?.close();
  });
  // "" is an admin's (no tenant); undefined: an admin sees every file.
  const owner = (req: FastifyRequest) => req.who.tenant ?? "";
  const scope = (req: FastifyRequest) => (req.who.admin && req.who.tenant === undefined ? undefined : owner(req));
  const own = async (req: FastifyRequest<{ Params: { id: string } }>) => {
    const f = await (await store()).get(req.params.id, scope(req));
    if (!f) throw fileNotFound(req.params.id);
    return f;
  };

  await app.register(multipart, {
    limits: { fileSize: options.maxFileBytes, files: 1, fields: 4 },
    throwFileSizeLimit: true,
  });
  app.post("/v1/files", async (req) => {
    const s = await store();
    let data: Buffer | undefined;
    let filename = "";
    let purpose: string | undefined;
    for await (const part of req.parts()) {
      if (part.type === "file") {
        if (part.fieldname !== "file") throw invalidRequest(part.fieldname, `Unexpected file field: ${part.fieldname}`);
        filename = part.filename;
        data = await part.toBuffer().catch((err: unknown) => {
          const e = err as { statusCode?: number };
          if (e.statusCode === 413) {
            throw new OpenAiError(
              413,
              "invalid_request_error",
              `File is larger than the limit of ${options.maxFileBytes} bytes`,
              "file",
              "file_too_large",
            );
          }
          throw err;
        });
      } else if (part.fieldname === "purpose") purpose = String(part.value);
      else throw invalidRequest(part.fieldname, `Unrecognized request argument supplied: ${part.fieldname}`);
    }
    if (purpose === undefined) throw invalidRequest("purpose", "Missing required parameter: 'purpose'");
    if (!PURPOSES.includes(purpose))
      throw invalidRequest(
        "purpose",
        `Invalid value for 'purpose': ${JSON.stringify(purpose.slice(0, 64))} (supported: batch)`,
      );
    if (!data) throw invalidRequest("file", "Missing required parameter: 'file'");
    return fileObject(await s.put(owner(req), filename.slice(0, 255), purpose, data));
  });
  app.get<{ Querystring: { purpose?: string; limit?: string; after?: string } }>("/v1/files", async (req) => {
    const q = req.query;
    const limit = q.limit === undefined ? 10_000 : Number(q.limit);
    if (!Number.isInteger(limit) || limit < 1 || limit > 10_000)
      throw invalidRequest("limit", "Invalid value for 'limit': an integer from 1 to 10000");
    let files = (await (await store()).list(scope(req))).filter((f) => !q.purpose || f.purpose === q.purpose);
    if (q.after) {
      const i = files.findIndex((f) => f.id === q.after);
      files = i < 0 ? [] : files.slice(i + 1);
    }
    const page = files.slice(0, limit);
    return {
      object: "list",
      data: page.map(fileObject),
      first_id: page[0]?.id ?? null,
      last_id: page.at(-1)?.id ?? null,
      has_more: files.length > limit,
    };
  });
  app.get<{ Params: { id: string } }>("/v1/files/:id", async (req) => fileObject(await own(req)));
  app.get<{ Params: { id: string } }>("/v1/files/:id/content", async (req, reply) => {
    const f = await own(req);
    const data = await (await store()).content(f.id);
    if (!data) throw fileNotFound(f.id);
    return reply.type("application/octet-stream").send(Buffer.from(data));
  });
  app.delete<{ Params: { id: string } }>("/v1/files/:id", async (req) => {
    const f = await own(req);
    await (await store()).delete(f.id);
    return { id: f.id, object: "file", deleted: true };
  });
}
