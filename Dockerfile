# syntax=docker/dockerfile:1
# Two images from one file (docker-compose.yml builds both):
#   --target web   the web app only: no torch, no GPU, no WebRTC stack (web/ reaches workers via Redis)
#   --target full  ingest and query workers: torch (a CUDA build from PyPI), PyAV, aiortc
FROM python:3.11-slim AS base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /app
# the package: flashlive/{model,memory,stream,web} are symlinks to the top-level folders (COPY keeps them)
COPY pyproject.toml README.md ./
COPY flashlive ./flashlive
COPY memory ./memory
COPY model ./model
COPY stream ./stream
COPY web ./web
RUN useradd --create-home --uid 1000 flashlive

FROM base AS web
COPY docker/requirements-web.txt /tmp/requirements-web.txt
RUN pip install -r /tmp/requirements-web.txt && pip install --no-deps . && rm -rf build
USER flashlive
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["flashlive", "web", "--config", "/config/flashlive.yaml"]

FROM base AS full
# torch from PyPI is a CUDA build on x86_64; flash-attn is optional (EXTRAS=".[gpu]" needs a CUDA toolchain)
ARG TORCH_SPEC="torch>=2.4"
ARG EXTRAS="."
RUN pip install "${TORCH_SPEC}" && pip install "${EXTRAS}" && rm -rf build
USER flashlive
CMD ["flashlive", "ingest", "--config", "/config/flashlive.yaml", "--follow-registry"]
