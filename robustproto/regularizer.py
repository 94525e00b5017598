"""The contract of a training regularizer and the context it is handed each step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["BatchContext", "RegularizedModel", "Regularizer", "StepContext"]


@runtime_checkable
class RegularizedModel(Protocol):
    """What a regularizer may use of the model it is given (``attach(model)``, ``ctx.model``).

    A :class:`robustproto.ProtoModel` is one: images in [0, 1] go through ``normalize``, then
    ``backbone`` (a timm model giving pooled features), then ``neck`` (``nn.Linear`` or
    ``nn.Identity``) to the embeddings ``embed(x)``, which ``head`` (a :class:`robustproto.Head`)
    turns into class scores. It is an ``nn.Module``: a regularizer may walk its modules (e.g. to
    hook BatchNorm layers or find the convolutions to penalise) and read its parameters. It should
    not replace modules or call ``forward``/``embed`` on the training batch (the core has embedded
    the batch already, ``ctx.z``; embed more images through ``extra_inputs``).
    """

    normalize: nn.Module
    backbone: nn.Module
    neck: nn.Module
    head: nn.Module
    training: bool

    @property
    def num_classes(self) -> int: ...

    @property
    def embed_dim(self) -> int: ...

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, embed_dim)`` of images in [0, 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores ``(B, num_classes)`` of images in [0, 1]."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def modules(self) -> Iterator[nn.Module]:
        """Every submodule, as ``nn.Module.modules``."""

    def named_modules(self, memo: set[nn.Module] | None = None, prefix: str = "",
                      remove_duplicate: bool = True) -> Iterator[tuple[str, nn.Module]]:
        """As ``nn.Module.named_modules``."""

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """As ``nn.Module.parameters``."""

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, nn.Parameter]]:
        """As ``nn.Module.named_parameters``."""

    def buffers(self, recurse: bool = True) -> Iterator[torch.Tensor]:
        """As ``nn.Module.buffers``."""


@dataclass(frozen=True)
class BatchContext:
    """What a regularizer sees of a training batch before the step's forward pass (``prepare_batch``).

    Attributes:
        x: the batch, images in [0, 1].
        y: the labels.
        model: the :class:`~robustproto.ProtoModel` (unwrapped from DDP), seen through
            :class:`RegularizedModel`.
        step: the global optimiser step.
        epoch: epochs done, fractional within an epoch (``epoch + batches done / batches per epoch``).
    """

    x: torch.Tensor
    y: torch.Tensor
    model: RegularizedModel
    step: int
    epoch: float


@dataclass(frozen=True)
class StepContext:
    """What a regularizer sees of one training step.

    Attributes:
        x: the batch, images in [0, 1] (requires grad when the regularizer set
            ``needs_input_grad``).
        y: the labels.
        z: the embeddings fed to the head, computed from ``x`` on the same graph.
        scores: the head's class scores ``(B, K)``.
        extra_z: embeddings of the regularizer's ``extra_inputs(x)``, computed in the
            same backbone call as ``z``, or ``None``.
        model: the :class:`~robustproto.ProtoModel` (unwrapped from DDP), seen through
            :class:`RegularizedModel`.
        step: the global optimiser step.
    """

    x: torch.Tensor
    y: torch.Tensor
    z: torch.Tensor
    scores: torch.Tensor
    extra_z: torch.Tensor | None
    model: RegularizedModel
    step: int


class Regularizer(nn.Module):
    """Base class of every regularizer plugin (entry-point group ``robustproto.regularizers``).

    Register a subclass in your own package::

        [project.entry-points."robustproto.regularizers"]
        myreg = "my_package.regs:MyRegularizer"

    and select it with ``--reg myreg:key=value,...`` (values parsed as Python
    literals). The contract:

    - ``__init__(self, **options)``: reject unknown options with a ``TypeError``.
    - ``penalty(ctx: StepContext) -> scalar tensor``: added to the head's loss.
      Already weighted: the core adds it as is. A plugin class that does not implement it
      is refused when it loads.
    - ``needs_input_grad: bool`` (class attribute, default ``False``; a plugin whose
      value is not a bool is refused when it loads): when ``True`` the
      core makes ``ctx.x`` require grad before the forward pass, so ``penalty`` may
      call ``torch.autograd.grad(..., ctx.x, create_graph=True)``.
    - ``extra_inputs(x) -> tensor | None`` (optional): more images to embed in the
      same backbone call as ``x`` (e.g. noisy neighbours); their embeddings arrive
      as ``ctx.extra_z``, in the same order.
    - ``attach(model)`` (optional): called once with the ProtoModel before
      ``accelerator.prepare`` (e.g. to create power-iteration buffers).
    - ``metrics() -> dict[str, float]`` (optional): logged per epoch as
      ``reg/<name>/<key>``, beside the mean penalty logged as ``reg/<name>``.
    - ``prepare_batch(batch: BatchContext) -> tensor | None`` (optional): called first in
      each step, for every regularizer in order, inside the step's autocast, before any
      ``extra_inputs``. It may compute images from the batch (an attack, say) and stash them
      for its ``extra_inputs``. When it returns images, they REPLACE ``x`` in the step: the
      head's loss, the scores and every regularizer's ``ctx.x``/``extra_inputs(x)`` are on
      them (detached; made to require grad when a regularizer ``needs_input_grad``). Only a
      regularizer with ``replaces_inputs = True`` may return images, and at most one per run
      may declare it (a ``UsageError`` at setup otherwise).
    - ``replaces_inputs: bool`` (class or instance attribute, default ``False``): see above.
    - ``clean_weight: float`` (class or instance attribute, default ``1.0``): the weight of
      the head's loss on the step's batch (the replaced one, if a regularizer replaced it);
      the core multiplies that loss by the product of every regularizer's ``clean_weight``, and
      leaves it out of the objective exactly when the product is 0 (it is still logged).

    Penalties should be computed in float32 (disable autocast around the
    arithmetic that needs it).
    """

    needs_input_grad: bool = False
    replaces_inputs: bool = False
    clean_weight: float = 1.0

    def __init__(self, **options: Any):
        super().__init__()
        if options:
            raise TypeError(f"{type(self).__name__} got unknown options: {', '.join(sorted(options))}")

    def penalty(self, ctx: StepContext) -> torch.Tensor:  # pragma: no cover - abstract
        """The weighted penalty of one step (a scalar tensor), added to the head's loss as is."""
        raise NotImplementedError(f"{type(self).__name__} must implement penalty(ctx)")

    def prepare_batch(self, batch: BatchContext) -> torch.Tensor | None:
        """Images that replace the step's batch (only with ``replaces_inputs``), or ``None``; the default: none."""
        return None

    def extra_inputs(self, x: torch.Tensor) -> torch.Tensor | None:
        """More images to embed in the same backbone call as ``x`` (their embeddings arrive as ``ctx.extra_z``); the default: none."""
        return None

    def attach(self, model: RegularizedModel) -> None:
        """Called once before ``accelerator.prepare``; the default does nothing."""

    def metrics(self) -> dict[str, float]:
        """Numbers logged per epoch as ``reg/<name>/<key>``; the default: none."""
        return {}
