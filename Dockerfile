# syntax=docker/dockerfile:1
# Turnout images. Targets:
#   gateway  (default)  the gateway alone: no torch, no vLLM; `turnout serve`
#   training            the package with its `training` extra and torch, for the chart's
#                       retraining CronJob: `turnout flywheel run --route ROUTE ...`
# The model server is the official vllm/vllm-openai image; nothing here builds it.
# Versions are pinned by constraints/*.txt (regenerate with `python constraints/refresh.py`).
# pip's downloads are kept in a build cache (RUN --mount=type=cache), never in a layer; the
# pinned dependencies are installed before the source is copied, so a code change rebuilds
# only the last layers. tests/deploy/test_images.py builds both targets with podman.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- build: wheels for the gateway and its pinned dependencies --------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY constraints/gateway.txt constraints/gateway.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels --constraint constraints/gateway.txt \
        --requirement constraints/gateway.txt
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY adapters adapters
COPY monitoring monitoring
COPY training training
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps --wheel-dir /wheels .

# --- training: `docker build --target training` -----------------------------------------------
FROM ${PYTHON_IMAGE} AS training
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# A folder of wheels to prefer (e.g. torch's CPU build), mounted into the build:
#   --volume ./wheelhouse:/wheelhouse:ro --build-arg PIP_FIND_LINKS=/wheelhouse
ARG PIP_FIND_LINKS=""
RUN groupadd --system --gid 10001 turnout \
    && useradd --system --uid 10001 --gid turnout --home-dir /var/lib/turnout \
       --create-home --shell /usr/sbin/nologin turnout
COPY constraints/training.txt /tmp/training.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --constraint /tmp/training.txt \
        torch peft transformers bitsandbytes accelerate safetensors numpy tqdm httpx
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels --constraint /tmp/training.txt \
        "turnout[training]" \
    && rm -rf /wheels /tmp/training.txt
USER 10001:10001
WORKDIR /var/lib/turnout
ENTRYPOINT ["turnout"]
CMD ["--help"]

# --- gateway: the default target (last, so a plain `docker build .` builds it) ---------
FROM ${PYTHON_IMAGE} AS gateway
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 turnout \
    && useradd --system --uid 10001 --gid turnout --home-dir /var/lib/turnout \
       --create-home --shell /usr/sbin/nologin turnout
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels turnout && rm -rf /wheels
USER 10001:10001
WORKDIR /var/lib/turnout
EXPOSE 8080 8081
# TURNOUT_HEALTHCHECK_URL: for a gateway configured on another port than 8080.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('TURNOUT_HEALTHCHECK_URL', 'http://127.0.0.1:8080/healthz'), timeout=2)"]
ENTRYPOINT ["turnout"]
CMD ["serve", "--config", "/etc/turnout/config/turnout.yaml"]
