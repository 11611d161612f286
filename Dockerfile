# syntax=docker/dockerfile:1
#
# facebank images. No model weights and no data sets are baked in: prepared ONNX models live in a volume
# mounted at /models, local state at /data (see docs/deployment.md).
#
#   docker build -t facebank .                          CPU image (onnxruntime, faiss-cpu), the default
#   docker build --target gpu -t facebank:gpu .         GPU image (onnxruntime-gpu, faiss-gpu) on a CUDA base
#   docker build --target prepare -t facebank:prepare . CPU image + torch, to run `facebank models prepare`
#
# Each image installs the project the way CI does (.ci/run): `python3 -m venv` then the venv's
# `pip install -q '.[extras]'` from pyproject.toml, with only the extras that image needs (and without -e:
# an image keeps no source tree to edit).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# ---- build stages: one virtualenv per flavour ----------------------------------------------------------

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY models ./models
COPY migrations ./migrations

FROM build AS build-cpu
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install -q '.[cpu,milvus]'

FROM build AS build-prepare
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install -q '.[cpu,train]'

# Why a separate base: the venv must be built by the same Python the GPU image runs (Ubuntu's python3).
FROM ${CUDA_IMAGE} AS cuda-python
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*

FROM cuda-python AS build-gpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY models ./models
COPY migrations ./migrations
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install -q '.[gpu,milvus]'

# ---- runtime stages -------------------------------------------------------------------------------------
# The same in every flavour: a non-root user, /models and /data volumes, config through FACEBANK_*,
# a HEALTHCHECK on /readyz (models loaded, database reachable, index in step with SQL).

FROM cuda-python AS gpu
RUN groupadd --system --gid 10001 facebank \
 && useradd --system --uid 10001 --gid facebank --create-home facebank \
 && mkdir -p /models /data && chown facebank:facebank /models /data
COPY --from=build-gpu /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    FACEBANK_MODEL_DIR=/models FACEBANK_DATA_DIR=/data FACEBANK_HOST=0.0.0.0 FACEBANK_PORT=8000 \
    FACEBANK_DEVICE=cuda
USER facebank
WORKDIR /home/facebank
VOLUME ["/models", "/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('FACEBANK_PORT', '8000'), timeout=4)" || exit 1
ENTRYPOINT ["facebank"]
CMD ["serve"]

FROM ${PYTHON_IMAGE} AS prepare
RUN groupadd --system --gid 10001 facebank \
 && useradd --system --uid 10001 --gid facebank --create-home facebank \
 && mkdir -p /models /data && chown facebank:facebank /models /data
COPY --from=build-prepare /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 FACEBANK_MODEL_DIR=/models FACEBANK_DATA_DIR=/data
USER facebank
WORKDIR /home/facebank
VOLUME ["/models"]
ENTRYPOINT ["facebank"]
CMD ["models", "prepare", "--from", "/weights", "--model-dir", "/models"]

# Last, so that a plain `docker build .` makes the CPU image.
FROM ${PYTHON_IMAGE} AS cpu
RUN groupadd --system --gid 10001 facebank \
 && useradd --system --uid 10001 --gid facebank --create-home facebank \
 && mkdir -p /models /data && chown facebank:facebank /models /data
COPY --from=build-cpu /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    FACEBANK_MODEL_DIR=/models FACEBANK_DATA_DIR=/data FACEBANK_HOST=0.0.0.0 FACEBANK_PORT=8000 \
    FACEBANK_DEVICE=cpu
USER facebank
WORKDIR /home/facebank
VOLUME ["/models", "/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('FACEBANK_PORT', '8000'), timeout=4)" || exit 1
ENTRYPOINT ["facebank"]
CMD ["serve"]
