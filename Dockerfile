# Two stages: build the wheels with the toolchain, then install only the wheels in a clean slim image.
# `docker build -t voices .` is the bot and the CLI on OpenRouter; add `--build-arg EXTRAS=local` for
# the free local model (llama.cpp is compiled in the build stage: a few minutes more, ~130 MB more).
# The image always has the fast and postgres extras: uvloop (about 4 MB, docs/benchmarks.md §9)
# and asyncpg, so one image runs on SQLite or PostgreSQL.
ARG EXTRAS=""

FROM python:3.11-slim AS build
ARG EXTRAS
WORKDIR /src
RUN if [ -n "$EXTRAS" ]; then \
      apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
      && rm -rf /var/lib/apt/lists/*; \
    fi
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
COPY config ./config
# An image runs on hosts other than the one that built it, so llama.cpp is built for any x86-64
# with AVX2 rather than for this builder's processor (-march=native); see bot/providers/microbatch.py.
RUN pip install --no-cache-dir --upgrade pip \
 && if [ "$(uname -m)" = "x86_64" ]; then \
      export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"; \
    fi \
 && export CMAKE_ARGS="${CMAKE_ARGS:-} -DLLAVA_BUILD=OFF" \
 && pip wheel --no-cache-dir --wheel-dir /wheels ".[fast,postgres${EXTRAS:+,$EXTRAS}]"

FROM python:3.11-slim
ARG EXTRAS
# VOICES_IMAGE: advice about installing things speaks of rebuilding the image, not of pip.
# The health endpoint listens on the container's network, for the HEALTHCHECK and for Prometheus.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    VOICES_IMAGE=1 \
    VOICES_METRICS_PORT=8080 VOICES_METRICS_HOST=0.0.0.0 \
    VOICES_DATABASE=/home/voices/data/voices.db \
    VOICES_TRANSCRIPTS_DIR=/home/voices/transcripts
# llama.cpp runs its threads with OpenMP.
RUN if [ -n "$EXTRAS" ]; then \
      apt-get update && apt-get install -y --no-install-recommends libgomp1 \
      && rm -rf /var/lib/apt/lists/*; \
    fi
RUN useradd --create-home --uid 10001 voices
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "voices[fast,postgres${EXTRAS:+,$EXTRAS}]" && rm -rf /wheels
USER voices
WORKDIR /home/voices
RUN mkdir -p data transcripts
VOLUME ["/home/voices/data", "/home/voices/transcripts"]
EXPOSE 8080
# Healthy while the gateway is connected and the database answers (see /healthz); for `voices bot`.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['VOICES_METRICS_PORT'] + '/healthz', timeout=4)"]
ENTRYPOINT ["voices"]
CMD ["bot"]
