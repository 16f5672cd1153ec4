/**
 * The greedy merge loop of llama2.c run.c's `encode()` in O(n log n):
 * run.c rescans every adjacent pair for the best merge after each merge
 * (O(n^2) for n tokens); here the candidate merges sit in a binary heap over
 * a doubly linked list of tokens, and a merge only queues the two pairs it
 * creates. Entries made stale by a later merge are skipped when popped (the
 * lazy invalidation of SentencePiece's bpe_model.cc and llama.cpp's
 * llm_tokenizer_spm; written anew here).
 *
 * Same tokens as run.c: the heap orders by score (highest first), then by
 * the left token's position (leftmost first). Positions of surviving tokens
 * keep their order under merges, so the original index of the left token
 * orders pairs exactly as run.c's left-to-right scan with strict `>` does.
 */

/** run.c's floor: a pair whose merge scores at most this is never merged. */
export const MERGE_SCORE_FLOOR = -1e10;

/**
 * The merge of the adjacent tokens `left`, `right` (token ids): the id of
 * the piece spelled by their concatenation, or -1 when there is none.
 */
export type PairMerge = (left: number, right: number) => number;

/**
 * Merges `tokens` (token ids, in order) in place of run.c's loop: while some
 * adjacent pair concatenates to a piece scoring above {@link MERGE_SCORE_FLOOR},
 * replaces the highest-scoring such pair (leftmost on ties) by that piece.
 * O(n log n) time and O(n) memory (about 32 bytes per token); `merge` is
 * called at most 3n times.
 * @param score merge score of a token id (float32 values, as tokenizer.bin's).
 * @returns the merged token ids (a new array).
 */
export function mergeGreedy(tokens: readonly number[], merge: PairMerge, score: (id: number) => number): number[] {
  const n = tokens.length;
  if (n < 2) return tokens.slice();
  const tok = Int32Array.from(tokens);
  const next = new Int32Array(n);
  const prev = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    next[i] = i + 1 < n ? i + 1 : -1;
    prev[i] = i - 1;
  }
  // changedAt[i]: the number of the last merge that changed token i (its id,
  // or its removal); an entry queued at merge t is stale once either of its
  // tokens changed after t.
  const changedAt = new Int32Array(n);
  const heap = createMergeHeap(2 * n);
  const queue = (left: number, t: number): void => {
    const right = next[left]!;
    const id = merge(tok[left]!, tok[right]!);
    if (id < 0) return;
    const s = score(id);
    if (s > MERGE_SCORE_FLOOR) heap.push(s, left, t, id);
  };
  for (let i = 0; i + 1 < n; i++) queue(i, 0);
  let merges = 0;
  let alive = n;
  while (heap.size > 0) {
    const { left, queuedAt, id } = heap.pop();
    const right = next[left]!;
    // A removed token is never a `left` with a live right neighbour: its
    // removal changed its left neighbour, which made every entry naming it stale.
    if (right < 0 || changedAt[left]! > queuedAt || changedAt[right]! > queuedAt) continue;
    merges++;
    tok[left] = id;
    changedAt[left] = merges;
    changedAt[right] = merges;
    const after = next[right]!;
    next[left] = after;
    if (after >= 0) prev[after] = left;
    alive--;
    if (prev[left]! >= 0) queue(prev[left]!, merges);
    if (after >= 0) queue(left, merges);
  }
  const out = new Array<number>(alive);
  for (let i = 0, k = 0; i >= 0; i = next[i]!) out[k++] = tok[i]!;
  return out;
}

/** One popped candidate merge. */
interface MergeEntry {
  /** Index of the pair's left token in the original sequence. */
  left: number;
  /** Number of merges done when the entry was queued. */
  queuedAt: number;
  /** Id of the merged piece. */
  id: number;
}

/**
 * A binary max-heap of candidate merges keyed by (score desc, left asc), in
 * parallel typed arrays. `capacity` bounds the entries held at once:
 * mergeGreedy holds at most n - 1 + (merges done) < 2n.
 */
function createMergeHeap(capacity: number) {
  // Scores are float32 (tokenizer.bin), so a Float32Array holds them exactly.
  const score = new Float32Array(capacity);
  const left = new Int32Array(capacity);
  const queuedAt = new Int32Array(capacity);
  const id = new Int32Array(capacity);
  let size = 0;
  /** Whether entry a comes out before entry b. */
  const before = (a: number, b: number): boolean =>
    score[a]! > score[b]! || (score[a] === score[b] && left[a]! < left[b]!);
  const swap = (a: number, b: number): void => {
    const s = score[a]!;
    score[a] = score[b]!;
    score[b] = s;
    const l = left[a]!;
    left[a] = left[b]!;
    left[b] = l;
    const q = queuedAt[a]!;
    queuedAt[a] = queuedAt[b]!;
    queuedAt[b] = q;
    const i = id[a]!;
    id[a] = id[b]!;
    id[b] = i;
  };
  return {
    get size(): number {
      return size;
    },
    push(s: number, l: number, q: number, merged: number): void {
      let k = size++;
      score[k] = s;
      left[k] = l;
      queuedAt[k] = q;
      id[k] = merged;
      while (k > 0) {
        const parent = (k - 1) >> 1;
        if (!before(k, parent)) break;
        swap(k, parent);
        k = parent;
      }
    },
    pop(): MergeEntry {
      const top: MergeEntry = { left: left[0]!, queuedAt: queuedAt[0]!, id: id[0]! };
      size--;
      if (size > 0) {
        swap(0, size);
        let k = 0;
        for (;;) {
          const a = 2 * k + 1;
          const b = a + 1;
          let best = k;
          if (a < size && before(a, best)) best = a;
          if (b < size && before(b, best)) best = b;
          if (best === k) break;
          swap(k, best);
          k = best;
        }
      }
      return top;
    },
  };
}
