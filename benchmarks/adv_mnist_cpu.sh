#!/usr/bin/env bash
# Issue 12's CPU check: adversarial training (METHOD: fgsm-rs, Wong et al. 2020, the default; or pgd-at with STEPS
# steps of 2.5·ε/STEPS, Madry et al. 2018) of `kp_cnn_mnist` with a linear and a GLVQ head on the full MNIST
# training set at L∞ ε = 0.1 and ε = 0.3, then clean accuracy, PGD-20, AutoAttack
# (standard: 100-step APGD-CE/APGD-T, FAB-T, Square 5000) and Square alone (5000 queries) at the training ε on
# a fixed subset of POINTS test points (1000).
#
#   bash benchmarks/adv_mnist_cpu.sh [DATA_DIR]      # DATA_DIR holds MNIST/raw (default ../shared/data)
#   LANES="linear@0.1 glvq@0.1" bash benchmarks/adv_mnist_cpu.sh   # only these runs, one lane each
#   METHOD=pgd-at STEPS=5 EPOCHS=4 LANES=linear@0.3 bash benchmarks/adv_mnist_cpu.sh
#   METHOD=pgd-at STEPS=5 EPOCHS=4 LANES=glvq@0.3 OPTIONS=clean_weight=1 TAG=clean1 bash benchmarks/adv_mnist_cpu.sh
#   (OPTIONS: more of the method's options, for every run; TAG marks the runs' names. GLVQ needs the clean term
#   under PGD-AT at ε = 0.3: without it, it collapsed, see REPRODUCTION.md)
#
# The recipes kp-mnist-{linear,glvq}-METHOD.toml are used with the overrides of adv_mnist_settings.sh, which fit a
# 2-core CPU (EPOCHS epochs, ε warm-up over WARMUP epochs). LANES (space-separated lanes of comma-separated
# HEAD@EPS runs) go side by side, one thread each. Models go to runs/adv-mnist-cpu/, reports to
# benchmarks/results/adv_mnist_cpu/, the log with wall times beside them.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
POINTS=${POINTS:-1000}
METHOD=${METHOD:-fgsm-rs}
case $METHOD in
  fgsm-rs) REG_OPTIONS="" ;;
  pgd-at) REG_OPTIONS=",steps=${STEPS:-5}" ;;
  *) echo "adv_mnist_cpu.sh: METHOD must be fgsm-rs or pgd-at, got '$METHOD'" >&2; exit 2 ;;
esac
REG_OPTIONS+=${OPTIONS:+,$OPTIONS}
TAG=${TAG:+-$TAG}
OUT=benchmarks/results/adv_mnist_cpu
mkdir -p "$OUT"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
source benchmarks/adv_mnist_settings.sh

lane() {  # one model after another: train, then evaluate
  for spec in "$@"; do
    head=${spec%@*}; eps=${spec#*@}; name="kp-mnist-$head-$METHOD$TAG-eps$eps"
    start=$(date +%s)
    robustproto train --config "recipes/kp-mnist-$head-$METHOD.toml" --data-dir "$DATA" \
      --reg "$METHOD:eps=$eps,warmup_epochs=$ADV_MNIST_WARMUP$REG_OPTIONS" "${ADV_MNIST_TRAIN[@]}" \
      --output "runs/adv-mnist-cpu/$name" > "$OUT/$name.train.log" 2>&1
    trained=$(date +%s)
    robustproto eval --config "recipes/kp-mnist-$head-$METHOD.toml" --model "runs/adv-mnist-cpu/$name" \
      --data-dir "$DATA" --n-samples "$POINTS" --eps "$eps" --attack pgd-20 --attack autoattack --attack square \
      --report "$OUT/$name.json" > "$OUT/$name.eval.log" 2>&1
    echo "$name train_s=$((trained - start)) eval_s=$(($(date +%s) - trained))" >> "$OUT/times.txt"
  done
}

for runs in ${LANES:-glvq@0.3,linear@0.1 linear@0.3,glvq@0.1}; do
  lane ${runs//,/ } &
done
wait
