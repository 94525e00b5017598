# Issue 12's MNIST training overrides, sourced by adv_mnist_cpu.sh and gpu_checks.sh so that both train alike:
# EPOCHS epochs (default 7) at batch 100 with Adam (lr 1e-3, cosine schedule) instead of the recipes' 84 epochs at
# batch 50, and ε ramped up over the first WARMUP epochs (default 2): append ",warmup_epochs=$ADV_MNIST_WARMUP" to
# the --reg spec and pass "${ADV_MNIST_TRAIN[@]}" to `robustproto train`.
ADV_MNIST_WARMUP=${WARMUP:-2}
ADV_MNIST_TRAIN=(--epochs "${EPOCHS:-7}" --batch-size 100 --lr 1e-3 --sched cosine)
