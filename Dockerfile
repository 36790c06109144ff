# The ext_proc server image: `docker build -t extism-extproc .`
# Plugins and the config are mounted at run time (see docker-compose.yaml and deploy/kubernetes/).

# --- build: a wheel of this project and of every dependency, so the runtime stage needs no compiler
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY extproc ./extproc
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- runtime
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin extproc
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels extism-extproc && rm -rf /wheels
WORKDIR /app
USER 10001
EXPOSE 50051
# A TCP connect to the gRPC port: the listener is up once the plugins are loaded.
HEALTHCHECK --interval=5s --timeout=2s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import socket; socket.create_connection(('127.0.0.1', 50051), 2).close()"]
ENTRYPOINT ["extproc"]
CMD ["serve", "--config", "/etc/extproc/extproc.yaml", "--listen", "0.0.0.0:50051"]
