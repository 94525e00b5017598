#!/usr/bin/env bash
# The GPU checks of issues 12 and 13 as one script for one GPU, inside a fixed wall-clock budget. Five lanes share
# the GPU, each a chain of `robustproto` commands:
#   wong   issue 12: recipes/wong-cifar10-preact-fgsm-rs.toml as written (15 epochs, fp16; --channels-last), then
#          PGD-20, standard AutoAttack (100-step APGD-CE/APGD-T, FAB-T, Square 5000) and Square 5000 at L∞ 8/255 on
#          N_CIFAR test points;
#   gloro  issue 13: recipes/gloro-mnist-4c3f-glvq.toml (500 epochs) for as long as the budget allows, then
#          `robustproto certify` on all 10 000 test points and FAB, CW and DeepFool (upper bounds of every
#          certified radius) on the first N_MINIMAL of them;
#   glorc  issue 13: recipes/gloro-cifar10-6c2f-glvq.toml shortened to CIFAR_EPOCHS epochs (the recipe's 800 do
#          not fit), then certify on the N_CIFAR test points;
#   fgsm   issue 12 on MNIST: kp_cnn_mnist + {linear, glvq} with fgsm-rs at L∞ ε = 0.1 and 0.3;
#   pgd    the same with pgd-at at ε = 0.3 (the recipes' 40 steps of 0.01; GLVQ with clean_weight = 1: under
#          Madry's objective alone it collapsed on the CPU, see REPRODUCTION.md);
#          both MNIST lanes train with benchmarks/adv_mnist_settings.sh's overrides (those of adv_mnist_cpu.sh:
#          7 epochs at batch 100, Adam 1e-3 cosine, ε warm-up over 2 epochs), then run PGD-20, standard
#          AutoAttack and Square 5000 on N_MNIST points.
# A training still running at its deadline gets SIGINT: robustproto saves the model as it is and a resumable state
# (`robustproto train --resume RUN` finishes it); the log and metrics.jsonl say which epoch it reached. Each attack
# writes its own report, so one cut short loses only itself.
#
#   bash benchmarks/gpu_checks.sh DATA RESULTS [BUDGET_SECONDS]
#
# DATA holds cifar10-jpg/{train,test}/CLASS/*.jpg and MNIST/raw; RESULTS receives the run folders, the reports
# and gpu_checks.log. Knobs (environment): LANES (the lanes to run, default "wong gloro glorc fgsm pgd"), N_CIFAR
# (2000), N_MINIMAL (1000), N_MNIST (1000), CIFAR_EPOCHS (40).
set -u
DATA=${1:?DATA folder}
RESULTS=${2:?RESULTS folder}
BUDGET=${3:-540}
N_CIFAR=${N_CIFAR:-2000}
N_MINIMAL=${N_MINIMAL:-1000}
N_MNIST=${N_MNIST:-1000}
CIFAR_EPOCHS=${CIFAR_EPOCHS:-40}
LANES=${LANES:-wong gloro glorc fgsm pgd}
START=$(date +%s)
mkdir -p "$RESULTS"
exec > >(tee -a "$RESULTS/gpu_checks.log") 2>&1
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=3
RP="python3 -m robustproto"
source "${BASH_SOURCE[0]%/*}/adv_mnist_settings.sh"
left() { echo $(( BUDGET - ($(date +%s) - START) - ${1:-0} )); }
wants() { [[ " $LANES " == *" $1 "* ]]; }
say() { echo "[$(( $(date +%s) - START )) s] $*"; }
# run CMD... with SIGINT after SECONDS (a training saves its state on it), killed 60 s later
until_() { local s=$1; shift; (( s > 5 )) || { say "skipped (no time left): $*"; return 124; }
           timeout -s INT --kill-after=60 "$s" "$@"; }
# ATTACKS one report each: attacks RUN REPORT_PREFIX ATTACK... -- EVAL_FLAGS...
attacks() { local run=$1 prefix=$2 attack rc; shift 2; local names=(); while [[ $1 != -- ]]; do names+=("$1"); shift
            done; shift; for attack in "${names[@]}"; do
                until_ "$(left 15)" $RP eval --model "$run" --attack "$attack" --report "$prefix.$attack.json" "$@"
                rc=$?; say "${prefix##*/}: $attack ended ($rc)"; done; }
# adversarial training of kp_cnn_mnist: mnist_lane NAME:HEAD:REG ...
mnist_lane() { local item name head reg eps; for item in "$@"; do
                   IFS=: read -r name head reg <<< "$item"; eps=${reg#*eps=}; eps=${eps%%,*}
                   until_ "$(left 60)" $RP train --config "recipes/kp-mnist-$head-${reg%%:*}.toml" --data-dir "$DATA" \
                       --reg "$reg,warmup_epochs=$ADV_MNIST_WARMUP" "${ADV_MNIST_TRAIN[@]}" --output "$RESULTS/$name"
                   say "$name: training ended ($?)"
                   attacks "$RESULTS/$name" "$RESULTS/$name" autoattack square pgd-20 -- --config \
                       "recipes/kp-mnist-$head-${reg%%:*}.toml" --n-samples "$N_MNIST" --batch-size "$N_MNIST" \
                       --eps "$eps"
               done; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, timm, accelerate, torchattacks, robustproto as r; print('torch', torch.__version__,
'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU', '| timm',
timm.__version__, '| accelerate', accelerate.__version__, '| torchattacks', torchattacks.__version__,
'| robustproto', r.__version__)" || exit 1

say "smoke: one tiny fp16 epoch with fgsm-rs and a short AutoAttack"
$RP train --backbone kp_cnn_mnist --head glvq --reg fgsm-rs:eps=0.1 --epochs 1 --max-train-samples 512 \
    --max-test-samples 256 --mixed-precision fp16 --output "$RESULTS/smoke" || exit 1
$RP eval --model "$RESULTS/smoke" --attack autoattack --eps 0.1 --n-samples 64 \
    --report "$RESULTS/smoke/report.json" || exit 1

WONG=recipes/wong-cifar10-preact-fgsm-rs.toml
GLORO=recipes/gloro-mnist-4c3f-glvq.toml
GLORC=recipes/gloro-cifar10-6c2f-glvq.toml
CIFAR=(--dataset imagefolder --data-dir "$DATA/cifar10-jpg")
lanes=()
wants wong && (
    say "wong: training"
    until_ "$(left 200)" $RP train --config $WONG "${CIFAR[@]}" --workers 6 --channels-last --output "$RESULTS/wong"
    say "wong: training ended ($?)"
    attacks "$RESULTS/wong" "$RESULTS/wong" autoattack square pgd-20 -- --config $WONG --n-samples "$N_CIFAR" \
        --batch-size "$N_CIFAR"
) & lanes+=($!)
wants gloro && (
    say "gloro: training"
    until_ "$(left 75)" $RP train --config $GLORO --data-dir "$DATA" --output "$RESULTS/gloro"
    say "gloro: training ended ($?)"
    until_ "$(left 45)" $RP certify --config $GLORO --model "$RESULTS/gloro" --report "$RESULTS/gloro.certify.json"
    say "gloro: certify ended ($?)"
    until_ "$(left 15)" $RP eval --config $GLORO --model "$RESULTS/gloro" --n-samples "$N_MINIMAL" \
        --batch-size "$N_MINIMAL" --report "$RESULTS/gloro.minimal.json"
    say "gloro: minimal attacks ended ($?)"
) & lanes+=($!)
wants glorc && (
    say "glorc: training"
    until_ "$(left 60)" $RP train --config $GLORC "${CIFAR[@]}" --epochs "$CIFAR_EPOCHS" --output "$RESULTS/glorc"
    say "glorc: training ended ($?)"
    until_ "$(left 15)" $RP certify --config $GLORC --model "$RESULTS/glorc" --n-samples "$N_CIFAR" \
        --report "$RESULTS/glorc.certify.json"
    say "glorc: certify ended ($?)"
) & lanes+=($!)
wants fgsm && mnist_lane kp-mnist-linear-fgsm-rs-eps0.1:linear:fgsm-rs:eps=0.1 kp-mnist-glvq-fgsm-rs-eps0.1:glvq:fgsm-rs:eps=0.1 \
    kp-mnist-linear-fgsm-rs-eps0.3:linear:fgsm-rs:eps=0.3 kp-mnist-glvq-fgsm-rs-eps0.3:glvq:fgsm-rs:eps=0.3 &
lanes+=($!)
wants pgd && mnist_lane kp-mnist-linear-pgd-at-eps0.3:linear:pgd-at:eps=0.3,steps=40,alpha=0.01 \
    kp-mnist-glvq-pgd-at-clean1-eps0.3:glvq:pgd-at:eps=0.3,steps=40,alpha=0.01,clean_weight=1 &
lanes+=($!)
wait "${lanes[@]}"  # not a bare wait: that would also wait for the log's tee, forever
say "done"
