# Stream Orchestrator — all-in-one image.
#
#   docker build -t streamorch .
#   docker run -p 8001:8001 -v streamorch-data:/data streamorch
#
# With no configuration the container starts PostgreSQL and Valkey inside itself
# (shipped as Python wheels, no system packages) with their data under /data, and
# serves the API on 0.0.0.0:8001. Set DATABASE_URL or DB_HOST (POSTGRES_HOST) to
# use an external PostgreSQL, and REDIS_URL or REDIS_HOST to use an external
# Redis/Valkey; the embedded server is then not started.
#
# The entrypoint, start-orchestrator.sh, runs `streamorch serve`: it validates
# the whole configuration first and exits 10 listing every problem with a fix,
# then starts/waits for the services, migrates, verifies and serves. Exit codes
# are in docs/reference/exit-codes.md. SIGTERM stops it cleanly, embedded
# services included; give it time (`docker stop -t 30`, compose
# `stop_grace_period`).
#
# Other settings (all optional): DB_PORT DB_NAME DB_USER DB_PASSWORD,
# REDIS_PORT REDIS_PASSWORD REDIS_REQUIRED (false: the server runs degraded
# without Redis), HEARTBEAT_INTERVAL (2) LEASE_TTL (10), STREAMORCH_WORKER_TOKEN
# STREAMORCH_ADMIN_TOKEN (unset: no authentication). See docs/howto/container.md.

# ---- build: install the package and its pinned dependencies into a venv ----
FROM python:3.11.7-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PATH=/opt/venv/bin:$PATH

WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN pip install --no-cache-dir -c constraints.txt .

# ---- runtime ----
FROM python:3.11.7-slim-bookworm

LABEL org.opencontainers.image.title="Stream Orchestrator" \
      org.opencontainers.image.description="Keeps every enabled long-running stream running on exactly one healthy worker." \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed, non-root uid/gid so /data ownership is predictable on volumes and
# Kubernetes `runAsNonRoot` can verify it. PostgreSQL refuses to run as root.
RUN groupadd --system --gid 10001 streamorch \
    && useradd --system --no-log-init --uid 10001 --gid streamorch \
       --create-home --home-dir /home/streamorch --shell /usr/sbin/nologin streamorch \
    && mkdir /data \
    && chown streamorch:streamorch /data

COPY --from=build /opt/venv /opt/venv
# Only the start script: without a pyproject.toml next to it, it uses the
# installed `streamorch` instead of creating a venv.
COPY start-orchestrator.sh /app/start-orchestrator.sh

# Start-up bounds, in seconds: POSTGRES_STARTUP_TIMEOUT and REDIS_STARTUP_TIMEOUT
# bound the wait for each service, APP_STARTUP_TIMEOUT the whole start-up; the
# HEALTHCHECK start period below is sized to APP_STARTUP_TIMEOUT.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STREAMORCH_SKIP_INSTALL=1 \
    STREAMORCH_DATA_DIR=/data \
    ORCHESTRATOR_HOST=0.0.0.0 \
    ORCHESTRATOR_PORT=8001 \
    LOG_LEVEL=INFO \
    LOG_FORMAT=structured \
    POSTGRES_STARTUP_TIMEOUT=60 \
    REDIS_STARTUP_TIMEOUT=30 \
    APP_STARTUP_TIMEOUT=120 \
    DB_TIMEOUT=5 \
    DB_MAX_RETRIES=5

WORKDIR /app
VOLUME ["/data"]
EXPOSE 8001
USER 10001:10001

# Healthy while GET /health answers 200 (also when degraded, e.g. Redis down);
# 503 (unhealthy) or no answer counts as a failure. The start period covers the
# longest start-up: APP_STARTUP_TIMEOUT (120 s), which also bounds the waits for
# PostgreSQL (60 s) plus Redis (30 s). If you raise APP_STARTUP_TIMEOUT, raise
# it too: `docker run --health-start-period=…`.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["streamorch", "healthcheck"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/start-orchestrator.sh"]
