#!/usr/bin/env bash
# What benchmarks/serving.py, api_overhead.py and drift.py need besides our own environment:
# the wrk load generator (apt) and one virtual environment per peer, since the peers pin
# versions ours cannot take (MLflow downgrades pyarrow, MLServer pins FastAPI). Idempotent:
# installs only what is missing. Without wrk the benchmarks fall back to their asyncio load
# generator; a peer whose environment is missing is skipped with a printed line.
set -u
PYTHON=${PYTHON:-python3.11}
bash "$(dirname "$0")/ensure-wrk.sh"
venv() {  # venv DIR PACKAGES...
  local dir=$1; shift
  if [ ! -x "$dir/bin/python" ]; then
    "$PYTHON" -m venv "$dir" && "$dir/bin/pip" install --quiet "$@" \
      || echo "could not set up $dir; that peer will be skipped" >&2
  fi
}
venv .venv-mlflow 'mlflow>=3,<4'
# MLServer 1.7.1's inference workers die at start with uvloop 0.22+ (SeldonIO/MLServer#2286)
venv .venv-mlserver mlserver mlserver-sklearn 'uvloop<0.22'
venv .venv-floor-std fastapi 'uvicorn[standard]' scikit-learn
# benchmarks/drift.py's peer; evidently 0.7 imports a pandas helper that pandas 3 removed
venv .venv-evidently 'evidently>=0.7' 'pandas<3' pyarrow
exit 0
