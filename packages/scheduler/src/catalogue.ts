/**
 * A small catalogue of well-known parts and model shapes for `tessera plan`.
 *
 * Units are SI throughout: bytes (1 GB = 1e9 B), bytes/s, FLOP/s, seconds,
 * US dollars per hour. Every hardware figure carries the datasheet it comes
 * from; every figure that is not on a datasheet (sustained fractions, host
 * memory per GPU, RTTs, prices) is labelled an assumption. Prices are
 * approximate on-demand list prices from memory of the providers' pricing pages
 * (they change often): override them with `price:` in a cluster file.
 */
import type { ModelShape } from "@tessera/core";

/** A cited source of a figure: a document name and where to find it. */
export interface Source {
  title: string;
  url: string;
}

/** A network link: one direction's line rate and the RTT assumed over it. */
export interface LinkPart {
  name: string;
  /** Line rate in bytes/s, one direction. */
  bandwidth: number;
  /** Fraction of the line rate a bulk transfer sustains (assumption). */
  sustainedFraction: number;
  /** Request/response round trip in seconds (assumption: same rack, gRPC over TCP). */
  rttS: number;
  source: Source;
}

/** Dense-compute accelerator. */
export interface GpuPart {
  kind: "gpu";
  name: string;
  /** Dense (no structured sparsity) bf16/f16 tensor FLOP/s. */
  flops: number;
  /** Fraction of `flops` a large decode/prefill GEMM reaches (assumption). */
  flopsEfficiency: number;
  /** Device (HBM/GDDR) memory bandwidth, bytes/s. */
  memoryBandwidth: number;
  /** Fraction of `memoryBandwidth` a weight or KV stream sustains (assumption). */
  bandwidthEfficiency: number;
  /** Device memory, bytes. */
  memoryBytes: number;
  /** Host link (PCIe) bandwidth in bytes/s, one direction; used by the FlexGen-style KV offload baseline. */
  pcieBandwidth: number;
  /** Host memory per GPU in a typical server carrying it, bytes (assumption); the offload baseline's KV capacity. */
  hostMemoryBytes: number;
  /** Assumed on-demand price of one GPU, $/h. */
  pricePerHour: number;
  priceSource: string;
  source: Source;
}

/** Attention over a KV cache in DRAM (a memory-node). */
export interface MemoryPart {
  kind: "memory";
  name: string;
  /** Theoretical DRAM bandwidth, bytes/s (channels × MT/s × 8 B). */
  memoryBandwidth: number;
  /** Fraction of the theoretical bandwidth a streaming read sustains (assumption, STREAM-like). */
  bandwidthEfficiency: number;
  /** KV capacity, bytes. */
  capacityBytes: number;
  /** f32 FLOP/s of the CPU (cores × FLOP/cycle × clock), for the attention roofline. */
  flops: number;
  flopsEfficiency: number;
  pricePerHour: number;
  priceSource: string;
  source: Source;
}

/** Attention next to a KV cache in files on NVMe (a storage-node); figures are per drive. */
export interface StoragePart {
  kind: "storage";
  name: string;
  /** Sequential read bandwidth of one drive, bytes/s. */
  readBandwidth: number;
  /** Sequential write bandwidth of one drive, bytes/s. */
  writeBandwidth: number;
  /** Fraction of the datasheet figures sustained by KV block streaming (assumption). */
  bandwidthEfficiency: number;
  /** Capacity of one drive, bytes. */
  capacityBytes: number;
  /** Drives in a node unless the cluster file says otherwise. */
  drives: number;
  /** CPU f32 FLOP/s of the node for the attention roofline. */
  flops: number;
  flopsEfficiency: number;
  pricePerHour: number;
  priceSource: string;
  source: Source;
}

export type NodePart = GpuPart | MemoryPart | StoragePart;

const GB = 1e9;
const T = 1e12;

/** NVIDIA H100 SXM5 80 GB. */
const h100: GpuPart = {
  kind: "gpu",
  name: "h100-sxm-80gb",
  flops: 989.4 * T, // BF16 dense (1,979 TFLOPS is with 2:4 sparsity)
  flopsEfficiency: 0.6,
  memoryBandwidth: 3350 * GB, // HBM3 3.35 TB/s
  bandwidthEfficiency: 0.8,
  memoryBytes: 80 * GB,
  pcieBandwidth: 64 * GB, // PCIe Gen5 x16: 128 GB/s both directions
  hostMemoryBytes: 256 * GB, // p5.48xlarge: 2 TiB host memory / 8 GPUs
  pricePerHour: 6.88,
  priceSource: "assumption: AWS p5.48xlarge on-demand (us-east-1, ~$55/h after the June 2025 cut) / 8 GPUs",
  source: {
    title: "NVIDIA H100 Tensor Core GPU datasheet (SXM5 column)",
    url: "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet",
  },
};

/** NVIDIA A100 SXM4 80 GB. */
const a100: GpuPart = {
  kind: "gpu",
  name: "a100-sxm-80gb",
  flops: 312 * T, // BF16 dense (624 with sparsity)
  flopsEfficiency: 0.6,
  memoryBandwidth: 2039 * GB, // HBM2e
  bandwidthEfficiency: 0.8,
  memoryBytes: 80 * GB,
  pcieBandwidth: 32 * GB, // PCIe Gen4 x16: 64 GB/s both directions
  hostMemoryBytes: 144 * GB, // p4de.24xlarge: 1152 GiB host memory / 8 GPUs
  pricePerHour: 5.12,
  priceSource: "assumption: AWS p4de.24xlarge on-demand (us-east-1, ~$41/h) / 8 GPUs",
  source: {
    title: "NVIDIA A100 Tensor Core GPU datasheet (A100 80GB SXM column)",
    url: "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf",
  },
};

/** NVIDIA L4 24 GB. */
const l4: GpuPart = {
  kind: "gpu",
  name: "l4",
  flops: 121 * T, // BF16 dense (242 with sparsity)
  flopsEfficiency: 0.6,
  memoryBandwidth: 300 * GB, // GDDR6
  bandwidthEfficiency: 0.8,
  memoryBytes: 24 * GB,
  pcieBandwidth: 32 * GB, // PCIe Gen4 x16
  hostMemoryBytes: 64 * GB, // g6.4xlarge: 64 GiB
  pricePerHour: 0.8,
  priceSource: "assumption: AWS g6.xlarge on-demand (us-east-1, ~$0.80/h, one L4)",
  source: {
    title: "NVIDIA L4 Tensor Core GPU datasheet",
    url: "https://www.nvidia.com/en-us/data-center/l4/",
  },
};

/**
 * One-socket DDR5 server: 8 channels of DDR5-4800 = 8 × 4800 MT/s × 8 B =
 * 307.2 GB/s theoretical, of which we assume 70% sustained (STREAM triad on
 * Sapphire Rapids sockets reaches roughly 70-80% of theoretical); 48 cores
 * × 64 f32 FLOP/cycle (two AVX-512 FMA units) × 2.0 GHz ≈ 6.1 TFLOP/s.
 */
const ddr5: MemoryPart = {
  kind: "memory",
  name: "ddr5-4800-8ch",
  memoryBandwidth: 307.2 * GB,
  bandwidthEfficiency: 0.7,
  capacityBytes: 768 * GB,
  flops: 6.1 * T,
  flopsEfficiency: 0.5,
  pricePerHour: 6.35,
  priceSource: "assumption: AWS r7i.24xlarge on-demand (us-east-1, 96 vCPU, 768 GiB)",
  source: {
    title:
      "JEDEC JESD79-5 DDR5 SDRAM standard (DDR5-4800 data rate); Intel Xeon 4th gen (Sapphire Rapids) product brief (8 DDR5 channels per socket)",
    url: "https://www.jedec.org/standards-documents/docs/jesd79-5c",
  },
};

/** Samsung PM9A3 3.84 TB, NVMe PCIe Gen4 U.2 (per drive); a storage node carries 4 by default. */
const nvme: StoragePart = {
  kind: "storage",
  name: "nvme-gen4-pm9a3",
  readBandwidth: 6.9 * GB,
  writeBandwidth: 4.1 * GB,
  bandwidthEfficiency: 0.8,
  capacityBytes: 3.84e12,
  drives: 4,
  flops: 1.5 * T, // 16 cores × 64 FLOP/cycle × ~1.5 GHz
  flopsEfficiency: 0.5,
  pricePerHour: 2.75,
  priceSource: "assumption: AWS i4i.8xlarge on-demand (us-east-1, 2 × 3.75 TB NVMe), scaled to 4 drives ≈ $2.75/h",
  source: {
    title: "Samsung PM9A3 NVMe SSD datasheet (3.84 TB U.2: 6,900 MB/s read, 4,100 MB/s write)",
    url: "https://semiconductor.samsung.com/ssd/datacenter-ssd/pm9a3/",
  },
};

/** The catalogue's node parts by name. */
export const PARTS: Readonly<Record<string, NodePart>> = {
  [h100.name]: h100,
  [a100.name]: a100,
  [l4.name]: l4,
  [ddr5.name]: ddr5,
  [nvme.name]: nvme,
};

const ieee8023: Source = {
  title: "IEEE 802.3 Ethernet (802.3by 25GBASE, 802.3ba 100GBASE)",
  url: "https://standards.ieee.org/ieee/802.3/10422/",
};

/** The catalogue's network links by name. */
export const LINKS: Readonly<Record<string, LinkPart>> = {
  "25GbE": { name: "25GbE", bandwidth: 25e9 / 8, sustainedFraction: 0.9, rttS: 50e-6, source: ieee8023 },
  "100GbE": { name: "100GbE", bandwidth: 100e9 / 8, sustainedFraction: 0.9, rttS: 50e-6, source: ieee8023 },
};

/** A named model shape with the source of its figures. */
export interface NamedShape {
  shape: ModelShape;
  source: Source;
}

const llama2Source: Source = {
  title: "Touvron et al. 2023, Llama 2 (arXiv:2307.09288) Table 1; meta-llama/Llama-2-*-hf config.json",
  url: "https://huggingface.co/meta-llama/Llama-2-70b-hf/blob/main/config.json",
};

function llama(dim: number, hiddenDim: number, nLayers: number, nHeads: number, nKvHeads: number): ModelShape {
  return {
    dim,
    hiddenDim,
    nLayers,
    nHeads,
    nKvHeads,
    vocabSize: 32000,
    seqLen: 4096,
    headDim: dim / nHeads,
    ropeTheta: 10000,
    normEps: 1e-5,
  };
}

/** Llama 2 shapes by name (case-insensitive lookup through {@link namedShape}). */
export const SHAPES: Readonly<Record<string, NamedShape>> = {
  "Llama-2-7B": { shape: llama(4096, 11008, 32, 32, 32), source: llama2Source },
  "Llama-2-13B": { shape: llama(5120, 13824, 40, 40, 40), source: llama2Source },
  "Llama-2-70B": { shape: llama(8192, 28672, 80, 64, 8), source: llama2Source },
};

/** The named shape `name` (case-insensitive), or undefined. */
export function namedShape(name: string): NamedShape | undefined {
  const key = Object.keys(SHAPES).find((k) => k.toLowerCase() === name.toLowerCase());
  return key === undefined ? undefined : SHAPES[key];
}
