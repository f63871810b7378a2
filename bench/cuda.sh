#!/usr/bin/env bash
# The benchmark on a CUDA machine, in one go (bench/RESULTS.md, "CUDA"): the server's end-to-end
# tests with the server on the GPU, then `python -m bench`. Run it from the repository root.
set -uo pipefail

usage() {
  cat <<'EOF'
Usage: bash bench/cuda.sh [options] [-- more python -m bench flags]

Installs onnxruntime-gpu and the runtime wheels into a scratch folder (no package index needed),
runs tests/test_server.py with the server on CUDA, then the bench; everything is written to --out.

Options (each also read from the environment variable in brackets):
  --ort-wheel FILE     the onnxruntime-gpu wheel                                   [ORT_GPU_WHEEL]
  --ort-parts GLOB     or: the wheel split in parts, joined in name order; the wheel's
                       file name is read from its metadata ('parts/ortgpu.part*')  [ORT_GPU_PARTS]
  --wheels DIR         wheels of the other runtime packages: grpcio, protobuf, prometheus-client,
                       grpcio-health-checking, grpcio-reflection, sentencepiece    [WHEELS, default .whl/extra]
  --site DIR           where to install them (default: a new temporary folder)     [SITE]
  --out DIR            results: machine.txt, tests.log, results.json, results.log  [OUT, default
                       bench/results/cuda-<date>-<host>]
  --tasks "T ..."      bench tasks (default "translation sentiment")              [BENCH_TASKS]
  --test-timeout S     seconds for the server tests (default 120)                 [TEST_TIMEOUT]
  --bench-timeout S    seconds for the bench (default 200)                        [BENCH_TIMEOUT]
  --skip-tests         only the bench
  -h, --help           this text

Also expects: python3 with numpy (and torch for the (c) baseline), the generated gRPC code in
protos/seqserve/v1/ (python -m protos.generate, brought along: there is no grpcio-tools here),
the bench's data (data/translation/pairs, data/sentiment; data/forecast for the tests) and the
checkpoints runs/*/model.pt (without one, that task's (c) baseline is skipped).
Example: bash bench/cuda.sh --ort-parts '/scratch/w/ortgpu.part*' --wheels /scratch/wheels --out "$OUT"
EOF
}

ort_wheel=${ORT_GPU_WHEEL:-}
ort_parts=${ORT_GPU_PARTS:-}
wheels=${WHEELS:-.whl/extra}
site=${SITE:-}
out=${OUT:-bench/results/cuda-$(date -u +%Y%m%d-%H%M)-$(hostname -s)}
tasks=${BENCH_TASKS:-translation sentiment}
test_timeout=${TEST_TIMEOUT:-120}
bench_timeout=${BENCH_TIMEOUT:-200}
skip_tests=0
while [ $# -gt 0 ]; do
  case $1 in
    --ort-wheel) ort_wheel=$2; shift 2 ;;
    --ort-parts) ort_parts=$2; shift 2 ;;
    --wheels) wheels=$2; shift 2 ;;
    --site) site=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --tasks) tasks=$2; shift 2 ;;
    --test-timeout) test_timeout=$2; shift 2 ;;
    --bench-timeout) bench_timeout=$2; shift 2 ;;
    --skip-tests) skip_tests=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "cuda.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

fail() { echo "cuda.sh: $*" >&2; exit 2; }
[ -f protos/generate.py ] || fail "run it from the repository root"
[ -n "$ort_wheel$ort_parts" ] || { usage >&2; fail "name the onnxruntime-gpu wheel (--ort-wheel or --ort-parts)"; }
[ -d "$wheels" ] || fail "--wheels $wheels is not a folder"
site=${site:-$(mktemp -d -t seqserve-site.XXXXXX)}
mkdir -p "$out" "$site"
export PYTHONUNBUFFERED=1

if [ -z "$ort_wheel" ]; then
  # shellcheck disable=SC2086  # the glob is meant to expand
  parts=$(ls -1 $ort_parts 2>/dev/null | sort) || true
  [ -n "$parts" ] || fail "--ort-parts '$ort_parts' matches no file"
  joined=$(mktemp -d -t seqserve-wheel.XXXXXX)/joined.zip
  # shellcheck disable=SC2086
  cat $parts > "$joined"
  name=$(python3 - "$joined" <<'EOF'
import sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
info = next(n for n in wheel.namelist() if n.count("/") == 1 and n.endswith(".dist-info/WHEEL"))
tags = [line.split(":", 1)[1].strip() for line in wheel.read(info).decode().splitlines() if line.startswith("Tag:")]
print(f"{info.split('/')[0].removesuffix('.dist-info')}-{tags[0]}.whl")
EOF
) || fail "the joined parts of '$ort_parts' are not a wheel"
  ort_wheel=$(dirname "$joined")/$name
  mv "$joined" "$ort_wheel"
fi
[ -f "$ort_wheel" ] || fail "--ort-wheel $ort_wheel does not exist"

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \
  "$ort_wheel" "$wheels"/*.whl 2>&1 | tail -3
export PYTHONPATH=$site:$PWD
# The CUDA libraries of the nvidia-* wheels (torch's, or installed beside onnxruntime-gpu).
site_packages=$(python3 -c "import site; print(site.getsitepackages()[0])")
cuda_libs=$(ls -d "$site_packages"/nvidia/*/lib "$site"/nvidia/*/lib 2>/dev/null | tr '\n' ':')
export LD_LIBRARY_PATH=${cuda_libs}${LD_LIBRARY_PATH:-}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  nproc
  python3 -c "import onnxruntime as o, grpc, google.protobuf as p, numpy as n
try:
    import torch; t = torch.__version__
except ImportError:
    t = 'absent'
print('onnxruntime', o.__version__, o.get_available_providers(), 'grpcio', grpc.__version__,
      'protobuf', p.__version__, 'numpy', n.__version__, 'torch', t)"
} 2>&1 | tee "$out/machine.txt"

if [ "$skip_tests" = 0 ]; then
  # The server's end-to-end tests with the server on CUDA (providers "auto"): batched = solo, greedy =
  # the reference runtime's (evaluate/) CPU loop token for token, cancellation, limits. The gRPC code
  # was brought along (no grpcio-tools here): mark it current.
  touch protos/.generated
  timeout "$test_timeout" python3 -m pytest -q -p no:cacheprovider tests/test_server.py 2>&1 | tee "$out/tests.log"
fi
# The server and the (a) loop pick CUDA by themselves; (c) stays PyTorch eager on the CPU.
# shellcheck disable=SC2086  # tasks are words
timeout "$bench_timeout" python3 -m bench --tasks $tasks --json "$out/results.json" "$@"
echo "cuda.sh: wrote $out (results.log has the bench's output)"
