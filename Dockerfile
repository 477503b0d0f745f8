# Two images from one file:
#   web    - Flask + gunicorn, no torch (small, starts fast)
#   worker - CUDA torch + diffusers, one process per GPU
FROM python:3.11-slim AS web
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY easel ./easel
COPY shared ./shared
COPY web ./web
COPY worker ./worker
COPY migrations ./migrations
# Installed, not run from here: a source folder named easel/ in the working directory
# would shadow the installed package.
RUN pip install . && rm -rf /src/*
RUN useradd --create-home easel && mkdir -p /data && chown easel /data
USER easel
WORKDIR /data
ENV EASEL_HOME=/data EASEL_HOST=0.0.0.0
EXPOSE 8000
CMD ["easel", "web"]

FROM python:3.11-slim AS worker
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# PyPI's Linux x86_64 torch wheel is the CUDA build (CUDA libraries come as nvidia-*
# wheels); the host's NVIDIA driver is exposed by the container toolkit.
ARG TORCH_SPEC=torch==2.13.0
RUN pip install "${TORCH_SPEC}"
COPY pyproject.toml README.md ./
COPY easel ./easel
COPY shared ./shared
COPY web ./web
COPY worker ./worker
COPY migrations ./migrations
RUN pip install ".[worker]" && rm -rf /src/*
# The compose volumes mounted here start with these folders' owner, so the worker can write them.
RUN useradd --create-home easel && mkdir -p /data/models /data/gpu-locks && chown -R easel /data
USER easel
WORKDIR /data
ENV EASEL_HOME=/data
CMD ["easel", "worker"]
