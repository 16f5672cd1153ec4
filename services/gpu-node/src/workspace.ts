/** The work buffers of one micro-batch slot of a Forward stream (reused from step to step). */

/** Reusable typed arrays of one Forward stream, grown on demand. */
export class Workspace {
  private readonly f32 = new Map<string, Float32Array>();
  private readonly u8 = new Map<string, Uint8Array>();
  private pos = new BigInt64Array(0);

  /** A [n] f32 view of the buffer `name`, grown (not preserving contents) when short. */
  buf(name: string, n: number): Float32Array {
    let b = this.f32.get(name);
    if (!b || b.length < n) {
      b = new Float32Array(Math.max(n, b ? 2 * b.length : 0));
      this.f32.set(name, b);
    }
    return b.length === n ? b : b.subarray(0, n);
  }

  /** A [n] byte view of the (8-byte aligned) byte buffer `name`, grown (not preserving contents) when short. */
  bytes(name: string, n: number): Uint8Array {
    let b = this.u8.get(name);
    if (!b || b.length < n) {
      b = new Uint8Array(Math.max(n, b ? 2 * b.length : 0));
      this.u8.set(name, b);
    }
    return b.length === n ? b : b.subarray(0, n);
  }

  /** Whether `a` is (a view of) the buffer `name`. */
  owns(a: Float32Array, name: string): boolean {
    return this.f32.get(name)?.buffer === a.buffer;
  }

  /** A [n] i64 view of the positions buffer, grown (not preserving contents) when short. */
  positions(n: number): BigInt64Array {
    if (this.pos.length < n) this.pos = new BigInt64Array(Math.max(n, 2 * this.pos.length));
    return this.pos.length === n ? this.pos : this.pos.subarray(0, n);
  }
}
