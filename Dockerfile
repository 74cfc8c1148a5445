# Two stages: build the wheel with the toolchain, then install only the wheel in a clean slim image.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
COPY config ./config
RUN pip install --no-cache-dir --upgrade pip \
 && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    VOICES_DATABASE=/home/voices/data/voices.db \
    VOICES_TRANSCRIPTS_DIR=/home/voices/transcripts
RUN useradd --create-home --uid 10001 voices
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER voices
WORKDIR /home/voices
RUN mkdir -p data transcripts
VOLUME ["/home/voices/data", "/home/voices/transcripts"]
ENTRYPOINT ["voices"]
CMD ["bot"]
