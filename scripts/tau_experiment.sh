#!/usr/bin/env bash
# The τ-schedule experiment of docs/analysis.md: the 300-W CPU recipe under three τ schedules
# (30 -> 1 as in the paper, a constant 5, 30 -> 3), two seeds each, at 30 epochs, two runs at a
# time on one core each. Run from the repository root after `make test` built .venv:
#     SEPBN_DATA=../shared/data scripts/tau_experiment.sh
# then `python scripts/tau_table.py runs/tau` prints the table. The 300-W common photos are
# the validation set only to log the attention statistics: the reported NME is the last
# epoch's, so nothing is chosen on them.
set -u
cd "$(dirname "$0")/.."
export SEPBN_DATA="${SEPBN_DATA:-../shared/data}" OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1
PY=.venv/bin/python
VAL="{kind: 300w, path: '\${SEPBN_DATA}/300W', split: common, name: 300w_common}"
run() {  # name seed start end epochs
  nice -n 10 $PY -m sepbn.cli -q train configs/recipes/300w_cpu_sepbn.yaml --run-dir runs/tau/$1_s$2 \
    --set seed=$2 --set optim.epochs=30 --set temperature.start=$3 --set temperature.end=$4 \
    --set temperature.epochs=$5 --set "data.val=$VAL" --set train.progress=false \
    --set train.val_every=5 --set train.tensorboard=false > runs/tau/$1_s$2.log 2>&1
  echo "$1_s$2 exit $?" >> runs/tau/done.txt
}
mkdir -p runs/tau
run anneal1 0 30.0 1.0 10 &
# wait for the caches of the first run before the others open them
while [ "$(ls cache/*/meta.json 2>/dev/null | wc -l)" -lt 2 ]; do sleep 10; done
run const5 0 5.0 5.0 0
wait
run floor3 0 30.0 3.0 10 &
run anneal1 1 30.0 1.0 10
wait
run const5 1 5.0 5.0 0 &
run floor3 1 30.0 3.0 10
wait
echo ALL DONE >> runs/tau/done.txt
