# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build --target operator -t dpe-operator .   the kopf operator: slim Python, operator extra only, non-root
#   docker build --target workload -t dpe-workload .   the stage image: CUDA, torch, vLLM, DeepSpeed; entrypoint `dpe`
#
# Every version is a build argument. The defaults are one set: the exact pins of pyproject.toml, the
# versions the test environment runs (transformers, TRL, datasets, openai, minio, kopf, kubernetes),
# and what vLLM 0.31.0 itself pins (torch 2.13.0, CUDA 13). tests/packaging/test_dockerfile.py fails
# when a default leaves the range pyproject.toml allows.

ARG PYTHON_VERSION=3.11
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-devel-ubuntu24.04

# ---------------------------------------------------------------------------------------------
# operator: built in a throw-away stage so the final image carries only the virtual environment.
# ---------------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS operator-build
ARG KOPF_VERSION=1.45.2
ARG KUBERNETES_VERSION=36.0.3
ARG PROMETHEUS_CLIENT_VERSION=0.26.0
ARG MINIO_VERSION=7.2.20
ARG PYDANTIC_VERSION=2.14.4
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY workloads ./workloads
COPY operator ./operator
# Only the operator extra: the operator imports dpe's spec and store, never torch.
RUN python -m venv /opt/dpe \
    && printf '%s\n' "kopf==${KOPF_VERSION}" "kubernetes==${KUBERNETES_VERSION}" \
        "prometheus-client==${PROMETHEUS_CLIENT_VERSION}" "minio==${MINIO_VERSION}" \
        "pydantic==${PYDANTIC_VERSION}" > /opt/dpe/constraints.txt \
    && /opt/dpe/bin/pip install --constraint /opt/dpe/constraints.txt ".[operator]"

FROM python:${PYTHON_VERSION}-slim-bookworm AS operator
# Same base as the build stage, so the venv's interpreter links stay valid; no compiler, no pip cache.
COPY --from=operator-build /opt/dpe /opt/dpe
RUN groupadd --system --gid 10001 dpe \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin dpe
ENV PATH=/opt/dpe/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Numeric user, so the kubelet can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
# 8080: Prometheus metrics (DPE_METRICS_PORT); 8081: kopf's liveness endpoint.
EXPOSE 8080 8081
# kopf behind leader election when DPE_LEADER_LEASE is set (the chart sets it), plain kopf otherwise.
ENTRYPOINT ["dpe-operator", "run", "-m", "dpe_operator.handlers"]
CMD ["--standalone", "--all-namespaces", "--liveness=http://0.0.0.0:8081/healthz"]

# ---------------------------------------------------------------------------------------------
# workload: every stage (`dpe stage NAME ...`) runs in this image.
# A devel CUDA image because DeepSpeed, Triton and FlashInfer compile kernels when they first run.
# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS workload
ARG TORCH_VERSION=2.13.0
ARG TRANSFORMERS_VERSION=5.17.0
ARG TRL_VERSION=1.16.0
ARG ACCELERATE_VERSION=1.15.0
ARG DATASETS_VERSION=5.2.0
ARG VLLM_VERSION=0.31.0
ARG DEEPSPEED_VERSION=0.19.8
ARG OPENAI_VERSION=3.63.0
ARG HTTPX2_VERSION=2.17.0
ARG HTTPCORE2_VERSION=2.17.0
ARG MINIO_VERSION=7.2.20
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Python headers and a C compiler: Triton and DeepSpeed build their extensions at run time.
# Ubuntu's package versions move with security updates, so pinning them would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential git ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/dpe \
    && printf '%s\n' "torch==${TORCH_VERSION}" "transformers==${TRANSFORMERS_VERSION}" "trl==${TRL_VERSION}" \
        "accelerate==${ACCELERATE_VERSION}" "datasets==${DATASETS_VERSION}" "vllm==${VLLM_VERSION}" \
        "deepspeed==${DEEPSPEED_VERSION}" "openai==${OPENAI_VERSION}" "httpx2==${HTTPX2_VERSION}" \
        "httpcore2==${HTTPCORE2_VERSION}" "minio==${MINIO_VERSION}" \
        > /opt/dpe/constraints.txt
ENV PATH=/opt/dpe/bin:${PATH}
# torch first: DeepSpeed's setup imports it, so DeepSpeed is built without isolation and without
# precompiled ops (they are compiled on first use, for the GPU that is actually there).
RUN pip install --constraint /opt/dpe/constraints.txt "torch==${TORCH_VERSION}" \
    && DS_BUILD_OPS=0 pip install --no-build-isolation --constraint /opt/dpe/constraints.txt "deepspeed==${DEEPSPEED_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY workloads ./workloads
COPY operator ./operator
RUN pip install --constraint /opt/dpe/constraints.txt ".[workloads,gpu]" \
    && rm -rf /src
RUN groupadd --system --gid 10001 dpe \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/dpe --shell /usr/sbin/nologin dpe \
    && mkdir -p /scratch \
    && chown 10001:10001 /scratch
# Caches go to the pod's scratch volume (builders mount an emptyDir at /scratch), not the image.
ENV DPE_CACHE_DIR=/scratch \
    HF_HOME=/scratch/huggingface \
    TRITON_CACHE_DIR=/scratch/triton \
    XDG_CACHE_HOME=/scratch/cache \
    PYTHONUNBUFFERED=1
WORKDIR /home/dpe
USER 10001:10001
ENTRYPOINT ["dpe"]
CMD ["--help"]
