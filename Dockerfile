# Two images from one file:
#   web    - Flask + gunicorn, no torch (small, starts fast)
#   worker - CUDA torch + diffusers, one process per GPU
FROM python:3.11-slim AS base
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /src

# The package's sources, which each image copies into /src, installs and removes. A stage of
# their own, so the worker's torch layer comes before them and survives their changes.
FROM scratch AS sources
COPY pyproject.toml README.md /src/
COPY easel /src/easel
COPY shared /src/shared
COPY web /src/web
COPY worker /src/worker
COPY migrations /src/migrations

FROM base AS web
COPY --from=sources /src ./
# Installed, not run from here: a source folder named easel/ in the working directory
# would shadow the installed package.
RUN pip install . && rm -rf /src/*
RUN useradd --create-home easel && mkdir -p /data && chown easel /data
USER easel
WORKDIR /data
ENV EASEL_HOME=/data EASEL_HOST=0.0.0.0
EXPOSE 8000
CMD ["easel", "web"]

FROM base AS worker
# PyPI's Linux x86_64 torch wheel is the CUDA build (CUDA libraries come as nvidia-*
# wheels); the host's NVIDIA driver is exposed by the container toolkit.
ARG TORCH_SPEC=torch==2.13.0
RUN pip install "${TORCH_SPEC}"
COPY --from=sources /src ./
RUN pip install ".[worker,upscale]" && rm -rf /src/*
# The compose volumes mounted here start with these folders' owner, so the worker can write them.
RUN useradd --create-home easel && mkdir -p /data/models /data/gpu-locks && chown -R easel /data
USER easel
WORKDIR /data
ENV EASEL_HOME=/data
CMD ["easel", "worker"]
