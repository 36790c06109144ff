# syntax=docker/dockerfile:1
# The ext_proc server image. The tag is the one docker-compose.yaml and deploy/kubernetes/ use:
#   docker build -t extism-extproc:0.1.0 .
# Plugins and the config are mounted at run time (see docker-compose.yaml and deploy/kubernetes/).
# The bind mounts below need BuildKit, Docker's builder since 23.0.

# --- build: a wheel of this project and of every dependency, so the runtime stage needs no compiler.
# The build context is mounted, not copied: read-write only because pip builds in the source tree, and
# what it writes there is discarded with the mount.
FROM python:3.11-slim AS build
# A C compiler for mypyc, which compiles the request path (EXTPROC_MYPYC=1, see setup.py).
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,target=/src,rw \
    EXTPROC_MYPYC=1 pip wheel --no-cache-dir --wheel-dir /wheels /src

# --- runtime: the wheels come in through a bind mount of the build stage, so no layer keeps them.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin extproc
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels extism-extproc
WORKDIR /app
USER 10001
EXPOSE 50051
# A TCP connect to the gRPC port: the listener is up once the plugins are loaded.
HEALTHCHECK --interval=5s --timeout=2s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import socket; socket.create_connection(('127.0.0.1', 50051), 2).close()"]
ENTRYPOINT ["extproc"]
CMD ["serve", "--config", "/etc/extproc/extproc.yaml", "--listen", "0.0.0.0:50051"]
