#!/usr/bin/env bash
# The benchmark on a CUDA machine, in one go (bench/RESULTS.md, "CUDA").
#
# Expects: python3 with numpy (and torch for the (c) baseline), the onnxruntime-gpu wheel's parts
# in /tmp/w (../shared/device/prepare-ort-gpu.sh splits it), the wheels of grpcio, protobuf and
# prometheus-client in .whl/extra, the generated protos in server/gen, and the bench's data and
# checkpoints (data/translation/pairs, data/sentiment, data/forecast for the tests, runs/*/model.pt;
# without a checkpoint the (c) baseline of its task is skipped). Writes under $OUT.
set -uo pipefail
out=${OUT:-/tmp/seqserve-cuda}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

cat /tmp/w/ortgpu.part0* > /tmp/w/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
  /tmp/w/onnxruntime_gpu-*.whl .whl/extra/*.whl 2>&1 | tail -3
export PYTHONPATH=/tmp/site:$PWD
site_packages=$(python3 -c "import site; print(site.getsitepackages()[0])")
LD_LIBRARY_PATH=$(ls -d "$site_packages"/nvidia/*/lib | tr '\n' ':')${LD_LIBRARY_PATH:-}
export LD_LIBRARY_PATH

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  nproc
  python3 -c "import onnxruntime as o, grpc, google.protobuf as p, numpy as n, torch as t
print('onnxruntime', o.__version__, o.get_available_providers(), 'grpcio', grpc.__version__,
      'protobuf', p.__version__, 'numpy', n.__version__, 'torch', t.__version__)"
} 2>&1 | tee "$out/machine.txt"

# The server's end-to-end tests with the server on CUDA (providers "auto"): batched = solo, greedy =
# export/check_shipped.py's CPU loop token for token, cancellation, limits. server/gen is carried
# (no grpcio-tools there): mark it current.
touch protos/seqserve/v1/.generated
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_server.py 2>&1 | tee "$out/tests_cuda.log"
# The server and the (a) loop pick CUDA by themselves; (c) stays PyTorch eager on the CPU
# (skipped for a task whose checkpoint was not brought along).
timeout 200 python3 -m bench --tasks ${BENCH_TASKS:-translation sentiment} --json "$out/results_cuda.json" 2>&1 | tee "$out/bench.log"
