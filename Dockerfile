# syntax=docker/dockerfile:1
# Turnout images. Targets:
#   gateway  (default)  the gateway alone: no torch, no vLLM; `turnout serve`
#   training            the gateway package plus torch, peft, transformers and bitsandbytes,
#                       for `turnout train ROUTE` in the chart's retraining Job
# The model server is the official vllm/vllm-openai image; nothing here builds it.
# Versions are pinned by constraints/*.txt (regenerate with `python constraints/refresh.py`).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- build: wheels for the gateway and its pinned dependencies --------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY constraints/gateway.txt constraints/gateway.txt
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY adapters adapters
COPY monitoring monitoring
COPY training training
RUN pip wheel --wheel-dir /wheels --constraint constraints/gateway.txt .

# --- training: `docker build --target training` -----------------------------------------------
FROM ${PYTHON_IMAGE} AS training
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 turnout \
    && useradd --system --uid 10001 --gid turnout --home-dir /var/lib/turnout \
       --create-home --shell /usr/sbin/nologin turnout
COPY constraints/training.txt /tmp/training.txt
COPY --from=build /wheels /wheels
RUN pip install --find-links /wheels --constraint /tmp/training.txt \
        turnout torch peft transformers bitsandbytes accelerate \
    && rm -rf /wheels /tmp/training.txt
USER 10001:10001
WORKDIR /var/lib/turnout
ENTRYPOINT ["turnout"]
CMD ["--help"]

# --- gateway: the default target (last, so a plain `docker build .` builds it) ---------
FROM ${PYTHON_IMAGE} AS gateway
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 turnout \
    && useradd --system --uid 10001 --gid turnout --home-dir /var/lib/turnout \
       --create-home --shell /usr/sbin/nologin turnout
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels turnout && rm -rf /wheels
USER 10001:10001
WORKDIR /var/lib/turnout
EXPOSE 8080 8081
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["turnout"]
CMD ["serve", "--config", "/etc/turnout/config/turnout.yaml"]
