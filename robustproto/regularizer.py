"""The contract of a training regularizer and the context it is handed each step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from .model import ProtoModel

__all__ = ["Regularizer", "StepContext"]


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
        model: the :class:`~robustproto.ProtoModel` (unwrapped from DDP).
        step: the global optimiser step.
    """

    x: torch.Tensor
    y: torch.Tensor
    z: torch.Tensor
    scores: torch.Tensor
    extra_z: torch.Tensor | None
    model: "ProtoModel"
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
      Already weighted: the core adds it as is.
    - ``needs_input_grad`` (class attribute, default ``False``): when ``True`` the
      core makes ``ctx.x`` require grad before the forward pass, so ``penalty`` may
      call ``torch.autograd.grad(..., ctx.x, create_graph=True)``.
    - ``extra_inputs(x) -> tensor | None`` (optional): more images to embed in the
      same backbone call as ``x`` (e.g. noisy neighbours); their embeddings arrive
      as ``ctx.extra_z``, in the same order.
    - ``attach(model)`` (optional): called once with the ProtoModel before
      ``accelerator.prepare`` (e.g. to create power-iteration buffers).
    - ``metrics() -> dict[str, float]`` (optional): logged per epoch as
      ``reg/<name>/<key>``, beside the mean penalty logged as ``reg/<name>``.

    Penalties should be computed in float32 (disable autocast around the
    arithmetic that needs it).
    """

    needs_input_grad: bool = False

    def __init__(self, **options: Any):
        super().__init__()
        if options:
            raise TypeError(f"{type(self).__name__} got unknown options: {', '.join(sorted(options))}")

    def penalty(self, ctx: StepContext) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement penalty(ctx)")

    def extra_inputs(self, x: torch.Tensor) -> torch.Tensor | None:
        return None

    def attach(self, model: "ProtoModel") -> None:
        """Called once before ``accelerator.prepare``; the default does nothing."""

    def metrics(self) -> dict[str, float]:
        return {}
