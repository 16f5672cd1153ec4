# syntax=docker/dockerfile:1
# The one image every Tessera role runs: `tessera coordinator`, `tessera node gpu|memory|storage`
# (the Helm chart in helm/tessera passes the role as the container's args).
#
#   docker build -t tessera:0.1.0 .
#   docker build --build-arg ONNXRUNTIME_NODE_INSTALL=cuda12 -t tessera:0.1.0-cuda .
#
# ONNXRUNTIME_NODE_INSTALL is onnxruntime-node's install flag: "skip" (default) keeps the CPU
# execution provider that ships inside the npm package; "cuda12" also downloads its CUDA 12
# provider, which then needs the CUDA 12 and cuDNN 9 runtime libraries on the GPU nodes' image.

ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS build
ARG ONNXRUNTIME_NODE_INSTALL=skip
WORKDIR /app
# Manifests first, so that `npm ci` is cached until a dependency changes. Every workspace's
# package.json must be there for npm to link the workspaces.
COPY package.json package-lock.json .npmrc ./
COPY packages/proto/package.json packages/proto/
COPY packages/core/package.json packages/core/
COPY packages/model/package.json packages/model/
COPY packages/rpc/package.json packages/rpc/
COPY packages/nats/package.json packages/nats/
COPY packages/telemetry/package.json packages/telemetry/
COPY packages/attention/package.json packages/attention/
COPY packages/scheduler/package.json packages/scheduler/
COPY packages/profiling/package.json packages/profiling/
COPY packages/testing/package.json packages/testing/
COPY services/memory-node/package.json services/memory-node/
COPY services/storage-node/package.json services/storage-node/
COPY services/gpu-node/package.json services/gpu-node/
COPY services/coordinator/package.json services/coordinator/
COPY apps/cli/package.json apps/cli/
RUN --mount=type=cache,target=/root/.npm \
    ONNXRUNTIME_NODE_INSTALL=${ONNXRUNTIME_NODE_INSTALL} npm ci --no-audit --no-fund
# Sources, then `buf generate` + `tsc -b`, then drop what only building needed.
COPY tsconfig.base.json tsconfig.json buf.yaml buf.gen.yaml ./
COPY proto proto
COPY packages packages
COPY services services
COPY apps apps
RUN npm run build \
    && npm prune --omit=dev --no-audit --no-fund \
    && rm -rf packages/*/src packages/*/test services/*/src services/*/test apps/*/src apps/*/test \
       packages/*/*.tsbuildinfo services/*/*.tsbuildinfo apps/*/*.tsbuildinfo

FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
WORKDIR /app
# A fixed non-root user (the chart's securityContext runs as the same ids).
RUN groupadd --system --gid 10001 tessera \
    && useradd --system --uid 10001 --gid tessera --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin tessera
COPY --from=build --chown=root:root /app /app
USER 10001:10001
# gRPC ports of the coordinator and of the gpu-, memory- and storage-node.
EXPOSE 7300 7301 7302 7303
ENTRYPOINT ["node", "/app/apps/cli/dist/main.js"]
CMD ["--help"]
