# The service's image: the package without its test extras, run as a non-root user. One image for
# every process; each runs one line of the Procfile (`honcho start web|worker|cron|release`), the
# same commands `make run` starts (compose.yaml wires them to Redis and PostgreSQL).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ARZANI_ENV=production \
    PROMETHEUS_MULTIPROC_DIR=/tmp/arzani-metrics

WORKDIR /srv/arzani
COPY setup.cfg pyproject.toml README.md Procfile ./
COPY app ./app
COPY workers ./workers
COPY scripts ./scripts
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --no-create-home --home-dir /srv/arzani arzani \
    && mkdir -p /tmp/arzani-metrics && chown arzani /tmp/arzani-metrics

USER 10001
EXPOSE 5000
CMD ["honcho", "start", "web"]
