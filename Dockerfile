# syntax=docker/dockerfile:1
# The seqserve server: Python from Debian, ONNX Runtime, gRPC and Prometheus; no torch, no compiler.
#   make image    (deploy/image.sh: Docker or Podman; seeds debian:bookworm-slim from Debian's
#                  packages where no registry is reachable, and passes pip's CA bundle as a secret)
# Plain `docker build -t seqserve .` works too where Docker Hub is reachable.

# Build stage: a virtual environment with the runtime dependencies and the seqserve wheel, whose
# build generates the gRPC code (setup.py; grpcio-tools stays in pip's throwaway build environment).
FROM debian:bookworm-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/seqserve
WORKDIR /src
# pip's CA bundle, where the build machine's pip needs one (a proxy's), is a build secret: it is
# mounted for these RUN steps only and is not in any layer.
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
       > requirements.txt \
    && /opt/seqserve/bin/pip install -r requirements.txt
COPY setup.py README.md ./
COPY protos protos
COPY contract contract
COPY server server
COPY client client
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && /opt/seqserve/bin/pip install --no-deps . \
    && /opt/seqserve/bin/pip uninstall -y pip setuptools \
    # Not used when serving (image size goal: under 300 MB): ONNX Runtime's C API library (34 MB; its Python
    # binding is self-contained, the import below checks that), its offline tools and every test suite.
    && cd /opt/seqserve/lib/python3*/site-packages \
    && rm -rf onnxruntime/capi/libonnxruntime.so* onnxruntime/transformers onnxruntime/quantization \
              onnxruntime/tools numpy/f2py numpy/distutils \
    && find . -type d -name tests -prune -exec rm -rf {} + \
    && /opt/seqserve/bin/python -c "import onnxruntime, server.app"
# The newest version of each model (image size goal): the older ones stay in the repository, for a mounted volume.
COPY models /models
RUN cd /models && for model in */; do ls "$model" | sort -n | head -n -1 | sed "s|^|$model|" | xargs -r rm -rf; done

# Runtime stage: Debian's python3 and the environment, the newest version of each bundled model, a non-root user.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin seqserve
COPY --from=build /opt/seqserve /opt/seqserve
COPY --from=build /models /app/models
WORKDIR /app
# ORT_DISABLE_TELEMETRY: ONNX Runtime (1.29 and later) reports usage to Microsoft unless this is set, and writes
# a device id under $HOME, which a read-only root filesystem refuses.
ENV PATH=/opt/seqserve/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 ORT_DISABLE_TELEMETRY=1
USER 10001:10001
EXPOSE 50051 9100
# grpc.health.v1 on the gRPC port: exit 0 only when SERVING (after every model has warmed up).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "client", "--timeout", "4", "health"]
# The server listens on loopback unless told otherwise: a container must listen on all of its interfaces, gRPC and
# /metrics. In the entry point, so that arguments given to `docker run` (which replace CMD) keep them.
ENTRYPOINT ["python", "-m", "server", "--host", "0.0.0.0", "--metrics-host", "0.0.0.0"]
CMD ["--models", "/app/models", "--port", "50051", "--metrics-port", "9100"]
