"""Training: a :class:`~robustproto.config.TrainConfig` in, a trained run folder out.

Accelerate runs it (``Accelerator(mixed_precision=...)``, ``prepare``, ``accelerator.backward``,
``gather_for_metrics``), so the same code runs on one CPU, under ``torchrun --nproc_per_node N``
(gloo on CPU, NCCL on GPUs) or ``accelerate launch``. Around the plain step it runs the plugin hooks:

- head: ``init_from_data`` once before training on embeddings of a fixed subset of the training
  set (every process computes it, and DDP's initial broadcast makes rank 0's result everyone's);
  ``after_step`` after each optimiser step (each only for a head whose capability flag says it has it);
- regularizers: ``attach`` before ``prepare``; ``needs_input_grad`` makes ``x`` require grad;
  ``extra_inputs`` are embedded in the same backbone call as ``x``; ``penalty`` is added to the loss.

Failures stop cleanly: a non-finite loss raises :class:`~robustproto.errors.NonFiniteLossError` naming the
step and the last good checkpoint; Ctrl-C (SIGINT) finishes the current step, saves a resumable state and
raises :class:`KeyboardInterrupt`; a model that does not fit the data, and an optimizer or schedule that
cannot work with the config's values, fail before the first step with a
:class:`~robustproto.errors.UsageError` naming the option.

Modules: :mod:`.step` (one step and one epoch: :class:`TrainStep`, :func:`compute_losses`,
:func:`train_one_epoch`), :mod:`.setup` (data, model, regularizers, prepared objects, resume),
:mod:`.optim` (optimizer and scheduler, probed), :mod:`.trackers` (``log_with``: Accelerate's experiment trackers),
:mod:`.loop` (:func:`train`).
"""

from .loop import TrainResult, train
from .optim import create_optimizer, create_scheduler
from .setup import PreparedRun, build_model, init_head_from_data, load_pretrained_backbone, prepare_run
from .step import EpochResult, Losses, TrainStep, compute_losses, epoch_sums, train_one_epoch

__all__ = [
    "EpochResult",
    "Losses",
    "PreparedRun",
    "TrainResult",
    "TrainStep",
    "build_model",
    "compute_losses",
    "create_optimizer",
    "create_scheduler",
    "epoch_sums",
    "init_head_from_data",
    "load_pretrained_backbone",
    "prepare_run",
    "train",
    "train_one_epoch",
]
