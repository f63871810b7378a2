# The seqserve server: ONNX Runtime, gRPC and Prometheus only (no torch). The gRPC code is
# generated at build time in a throwaway stage that has grpcio-tools.
FROM python:3.11-slim AS protos
WORKDIR /src
RUN pip install --no-cache-dir "grpcio-tools>=1.60"
COPY protos protos
RUN python -m protos.generate

FROM python:3.11-slim
WORKDIR /app
RUN pip install --no-cache-dir "numpy>=1.26" "onnxruntime>=1.18" "grpcio>=1.60" "protobuf>=4.25" \
    "prometheus-client>=0.20" "grpcio-health-checking>=1.60" "grpcio-reflection>=1.60" "sentencepiece>=0.2"
COPY contract contract
COPY server server
COPY client client
COPY --from=protos /src/protos protos
COPY models models
EXPOSE 50051 9100
USER nobody
# The server listens on localhost unless told otherwise; in a container the address is the container's own.
# Flags given to `docker run` come after these and win.
ENTRYPOINT ["python", "-m", "server", "--host", "0.0.0.0", "--metrics-host", "0.0.0.0"]
CMD ["--models", "models", "--port", "50051", "--metrics-port", "9100"]
