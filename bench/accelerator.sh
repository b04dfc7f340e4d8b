#!/usr/bin/env bash
# One prepared run on an accelerator machine: the test suite, then the benchmarks, each
# bounded in time, with the figures written to bench/results.md in sections named after
# the device (bench/_common.py's write_section adds the device kind to the title off CPU).
#
# Assumes jax with the accelerator's plugin and the test dependencies are installed (no
# network is needed); wheels for anything missing can be put in .whl/ beforehand and are
# installed into /tmp/site.  Everything it prints also goes to $OUT/accelerator.log, and
# bench/results.md is copied to $OUT, when OUT is set.
#
#   bash bench/accelerator.sh            # tests (about 4 min) + benchmarks (about 6 min)
#   TESTS_S=0 bash bench/accelerator.sh  # benchmarks only
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/handgrad-accelerator}
mkdir -p "$OUT"
TESTS_S=${TESTS_S:-240}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
exec > >(tee "$OUT/accelerator.log") 2>&1

python3 -c "import jax; print('jax', jax.__version__, jax.devices())" || exit 1
# On CPU the benchmarks would replace the CPU sections of results.md with quick figures.
python3 -c "import jax, sys; sys.exit(jax.devices()[0].platform == 'cpu')" \
  || { echo "bench/accelerator.sh: jax sees no accelerator (platform cpu); stopping"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null

if [ "$TESTS_S" -gt 0 ]; then
  # The whole suite; the 8-device sharding tests force CPU devices in their own subprocesses.
  timeout "$TESTS_S" python3 -m pytest -q -n 8 -p no:cacheprovider tests \
    | tail -n 40 || echo "test suite: exit $? (124 = stopped at ${TESTS_S}s)"
fi

bench() { echo "== $*"; timeout "$1" python3 "${@:2}" || echo "$2: exit $?"; }
bench 150 bench/engine.py --quick
bench 60  bench/engine.py --models cnn
bench 90  bench/mfu.py
bench 60  bench/remat.py
bench 60  bench/scan.py
cp bench/results.md "$OUT/results.md"
