# syntax=docker/dockerfile:1
# One image for all six Mosaic services; the command picks the service:
#   python -m <name>_service   (ingestion, identity, profile, segmentation, consent, delivery)

# Both stages must use the very same interpreter: the venv refers to it by path.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
# The same uv series as the Makefile, which reads this uv.lock.
ARG UV_VERSION=0.13.*
RUN pip install --no-cache-dir --root-user-action=ignore "uv==${UV_VERSION}"
ENV UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1
WORKDIR /app
COPY . .

# The stubs are git-ignored (and .dockerignore'd), so generate them before mosaic-proto's
# wheel is built. grpcio-tools comes from the locked dev group, in a throwaway venv, so none
# of it reaches the runtime venv.
RUN --mount=type=cache,target=/root/.cache/uv \
    UV_PROJECT_ENVIRONMENT=/tmp/codegen uv sync --frozen --only-group dev \
 && mkdir -p libs/mosaic-proto/src \
 && find protos -name '*.proto' -exec /tmp/codegen/bin/python -m grpc_tools.protoc -I protos \
      --python_out=libs/mosaic-proto/src --pyi_out=libs/mosaic-proto/src \
      --grpc_python_out=libs/mosaic-proto/src {} +

# Non-editable: the workspace members are installed as wheels, so the runtime needs no sources.
# Bytecode is compiled now because the runtime's root filesystem is read-only. The test
# fixtures, and pytest with them, stay out of the production image.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --all-packages --no-editable \
      --no-install-package mosaic-testing --no-install-package pytest --no-install-package pluggy \
      --no-install-package iniconfig


FROM ${PYTHON_IMAGE}
# A numeric uid lets Kubernetes' runAsNonRoot verify it; home is /tmp, the only writable place.
RUN groupadd --system --gid 10001 mosaic \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin mosaic
COPY --from=builder /app/.venv /app/.venv
# MOSAIC_DATA_DIR only matters for MOSAIC_STORE=embedded (the default outside Kubernetes):
# keep it under /tmp so a read-only root still works.
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MOSAIC_GRPC_PORT=50051 \
    MOSAIC_DATA_DIR=/tmp/mosaic
WORKDIR /app
USER 10001:10001
# gRPC, the HTTP API (ingestion), the Prometheus endpoint (MOSAIC_METRICS_PORT).
EXPOSE 50051 8080 9464
CMD ["python", "-m", "ingestion_service"]
