# syntax=docker/dockerfile:1
#
# syncd container image.
#
#   docker build -t syncd .
#   docker run --rm -p 8080:8080 \
#       -e SYNCD_HTTP__TOKEN="$(openssl rand -hex 32)" \
#       -e SYNCD_REDIS__URL=redis://redis.example:6379/0 \
#       -e SYNCD_DATABASES__MYSQL=mysql://user:pass@db.example:3306/app \
#       -v "$PWD/syncd.yaml:/etc/syncd/syncd.yaml:ro" -e SYNCD_CONFIG=/etc/syncd/syncd.yaml \
#       syncd
#
# The control plane listens on 0.0.0.0:8080 inside the container, and syncd
# refuses a non-loopback listen address without a token: provide
# SYNCD_HTTP__TOKEN at run time (env, compose secret, Kubernetes Secret).
# Never bake a token or a password into the image.
#
# Shutdown: syncd flushes for up to shutdown_grace (30 s by default) after
# SIGTERM; `docker stop` waits only 10 s, so use `docker stop -t 45` (compose:
# stop_grace_period: 45s).

# ---- builder: one wheel for the core, one per plugin, and all their dependencies
FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY . .
RUN set -eu; \
    set -- .; \
    for d in plugins/*/; do \
        if [ -f "${d}pyproject.toml" ]; then set -- "$@" "$d"; fi; \
    done; \
    echo "building wheels for: $*"; \
    pip wheel --wheel-dir /wheels "$@"

# ---- runtime
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# Only wheels built above; nothing from the network at this point.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/*.whl

RUN groupadd --system --gid 10001 syncd \
    && useradd --system --uid 10001 --gid syncd --home-dir /var/lib/syncd \
        --shell /usr/sbin/nologin syncd \
    && install -d -o syncd -g syncd -m 0750 /var/lib/syncd \
    && install -d -m 0755 /etc/syncd

# State (e.g. the default SQLite file) lives in /var/lib/syncd: mount a
# volume there if it must outlive the container. The user by number, so a
# runtime can tell it is not root without reading /etc/passwd (Kubernetes'
# runAsNonRoot needs that; contrib/kubernetes sets the same uid).
USER 10001:10001
WORKDIR /var/lib/syncd

# Listen on all interfaces inside the container (requires SYNCD_HTTP__TOKEN
# at run time). Environment variables win over the YAML file, so change the
# port with -e SYNCD_HTTP__LISTEN=..., not with http.listen. Config: mount a
# file and set SYNCD_CONFIG (or pass --config), or use SYNCD_* variables alone.
ENV SYNCD_HTTP__LISTEN=0.0.0.0:8080
EXPOSE 8080

# No curl in slim images: ask /health/live with the standard library. The
# port follows SYNCD_HTTP__LISTEN.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('SYNCD_HTTP__LISTEN', '0.0.0.0:8080').rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/health/live', timeout=4).close()"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["syncd"]
CMD ["serve"]
