# One image for both programs of agentrun-operator: the operator (the default command)
# and the runner, which each run's Job starts with `command: [agentrun-runner]`.
#
#   docker build -t agentrun-operator:dev .      (or: make image)
#
# The builder stage builds the project's wheel and installs it with its dependencies
# into a virtual environment; the final stage copies only that environment onto the
# same slim base, so no build tools, caches or sources reach the image.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# The virtual environment carries no pip of its own: the base image's pip fills it.
RUN python -m venv --without-pip /opt/venv

COPY pyproject.toml README.md ./
COPY operator/ operator/

# Versions come from pyproject.toml (pinned there); the wheel is installed, not the
# source tree, so the environment holds exactly what the package declares.
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && python -m pip --python /opt/venv/bin/python install --no-cache-dir /wheels/*.whl \
    && /opt/venv/bin/python -m compileall -q /opt/venv


FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown

LABEL org.opencontainers.image.title="agentrun-operator" \
      org.opencontainers.image.description="Kubernetes operator and runner for LLM agents as AgentRun custom resources" \
      org.opencontainers.image.source="https://github.com/agentrun-dev/agentrun-operator" \
      org.opencontainers.image.url="https://github.com/agentrun-dev/agentrun-operator" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

# HOME in /tmp: the user has no home directory, and /tmp is the pods' only writable
# place (an emptyDir under a read-only root file system).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp

COPY --from=builder /opt/venv /opt/venv

# The uid of the charts' and Jobs' securityContext (runAsUser 65532), numeric so that
# runAsNonRoot can verify it without a passwd entry.
USER 65532:65532
WORKDIR /tmp

# No entrypoint: the Deployment and the Jobs each name their command.
ENTRYPOINT []
CMD ["agentrun-operator"]
