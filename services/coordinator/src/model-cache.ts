import { loadModelTokenizer, readModelHeader } from "@tessera/model";
import type { LoadedModel } from "./engine/index.js";

/**
 * Loads a model's header and tokenizer once per (model, tokenizer) path
 * pair; concurrent jobs on the same model share the promise.
 */
export class ModelCache {
  private readonly models = new Map<string, Promise<LoadedModel>>();

  /**
   * @throws CheckpointError naming the file when the checkpoint or tokenizer
   *   is missing or corrupt (the failed load is not cached).
   */
  get(modelPath: string, tokenizerPath: string): Promise<LoadedModel> {
    const key = `${modelPath}\0${tokenizerPath}`;
    let p = this.models.get(key);
    if (!p) {
      p = (async () => {
        const header = await readModelHeader(modelPath);
        const tokenizer = await loadModelTokenizer(tokenizerPath, header.shape.vocabSize);
        return { modelPath, tokenizerPath, header, tokenizer };
      })();
      this.models.set(key, p);
      p.catch(() => this.models.delete(key));
    }
    return p;
  }
}
