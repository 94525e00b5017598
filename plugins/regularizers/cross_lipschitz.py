"""``cross-lipschitz``: Hein & Andriushchenko's penalty on the differences of the class-score gradients."""

from __future__ import annotations

import torch

from robustproto import Regularizer, StepContext
from robustproto.errors import UsageError

MODES = ("estimate", "exact")


class CrossLipschitz(Regularizer):
    """``weight · Ω`` with ``Ω = 1/(nK²) Σ_i Σ_{l,m} ‖∇ₓf_l(x_i) − ∇ₓf_m(x_i)‖²`` on the class scores.

    Hein & Andriushchenko 2017, "Formal guarantees on the robustness of a classifier against
    adversarial manipulation", Eq. 6: small differences of the score gradients make their
    Theorem 2.1 robustness guarantee large. Gradients are taken w.r.t. the images in [0, 1]
    (pixel units).

    For one sample let ``J`` be the ``K × d`` Jacobian with rows ``g_l = ∇ₓf_l`` and
    ``P = I − 11ᵀ/K`` the centring projector. Expanding the squares,

        Σ_{l,m} ‖g_l − g_m‖² = 2K Σ_l ‖g_l‖² − 2 ‖Σ_l g_l‖² = 2K ‖PJ‖_F²,

    since ``‖PJ‖_F² = Σ_l ‖g_l − ḡ‖² = Σ_l ‖g_l‖² − ‖Σ_l g_l‖²/K``. For ``v ~ N(0, P)`` (a standard
    Gaussian minus its mean, ``v = Pu``), ``E‖Jᵀv‖² = tr(Jᵀ E[vvᵀ] J) = tr(JᵀPJ) = ‖PJ‖_F²`` (``P`` is
    symmetric and idempotent). Hence per sample

        Σ_{l,m} ‖g_l − g_m‖² / K² = (2/K)·‖PJ‖_F² = (2/K)·E_v ‖Jᵀv‖².

    Modes:
        ``estimate`` (default): the mean of ``(2/K)‖Jᵀv‖²`` over ``samples`` draws of ``v`` per
            sample, an unbiased estimate of Ω. ``Jᵀv`` for the whole batch is one backward pass,
            ``∇ₓ Σ_i v_iᵀ f(x_i)``, so the cost is ``samples`` backward passes whatever ``K``.
        ``exact``: all ``K`` input gradients (``K`` backward passes), ``(2/K)‖PJ‖_F²``: the reference.

    Options: ``weight`` (0.01, the middle of the paper's λ grid {1, …, 10⁻³} for its kernel
    machines; the scale of ``Ω`` depends on the head's scores), ``mode``, ``samples`` (1).

    How it stays correct under the training loop:

    - The input gradient is ``torch.autograd.grad(..., ctx.x, create_graph=True)`` on the step's
      own graph (the core makes ``x`` require grad, ``needs_input_grad``). It is taken w.r.t. ``x``,
      a leaf that is no parameter: that pass runs no parameter's ``AccumulateGrad`` and so fires
      none of DDP's reducer hooks. The penalty's dependence on the parameters is a double-backward
      graph joined to the main one, and the total loss goes through one ``accelerator.backward``:
      each parameter's ``AccumulateGrad`` runs once with the sum of both paths, so DDP all-reduces
      each gradient once, as in a plain step. No DDP setting is needed (no
      ``find_unused_parameters``, no ``static_graph``); tests/test_regularizers.py checks that
      2-process gradients equal 1-process gradients on the same global batch.
    - Autocast: scores are cast to float32 and the squares and sums run with autocast off; the
      backward passes through the (possibly bf16/fp16) forward ops as autograd recorded them.
      Under fp16 the gradient scaler scales the total loss, and ``Ω`` is computed before it, so
      the penalty sees unscaled gradients.
    - BatchNorm in training mode couples a batch's samples: ``∇ₓ`` of the batch's scores then
      includes the (O(1/B)) paths through the batch statistics. That is the gradient of the
      function being trained; in eval mode the per-sample gradients are exact.
    """

    needs_input_grad = True

    def __init__(self, weight: float = 0.01, mode: str = "estimate", samples: int = 1):
        super().__init__()
        if mode not in MODES:
            raise UsageError(f"cross-lipschitz: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if weight < 0:
            raise UsageError(f"cross-lipschitz: weight must be >= 0, got {weight}")
        if int(samples) != samples or samples < 1:
            raise UsageError(f"cross-lipschitz: samples must be a positive integer, got {samples!r}")
        self.weight, self.mode, self.samples = float(weight), mode, int(samples)

    def penalty(self, ctx: StepContext) -> torch.Tensor:
        if not ctx.x.requires_grad:
            raise RuntimeError("cross-lipschitz needs ctx.x to require grad before the forward pass "
                               "(the training loop does this for regularizers with needs_input_grad)")
        with torch.autocast(ctx.x.device.type, enabled=False):
            scores = ctx.scores.float()
            per_sample = self.exact(scores, ctx.x) if self.mode == "exact" else self.estimate(scores, ctx.x)
        return self.weight * per_sample.mean()

    def estimate(self, scores: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample unbiased estimates ``(2/K)·mean_s ‖J_iᵀ v_s‖²``, ``v_s ~ N(0, P)``: ``samples`` backward passes."""
        num_classes = scores.shape[1]
        total = scores.new_zeros(len(scores))
        for _ in range(self.samples):
            v = torch.randn_like(scores)
            v = v - v.mean(1, keepdim=True)
            (jtv,) = torch.autograd.grad((scores * v).sum(), x, create_graph=True)
            total = total + jtv.float().flatten(1).pow(2).sum(1)
        return (2.0 / num_classes) * total / self.samples

    @staticmethod
    def exact(scores: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-sample ``Σ_{l,m}‖g_l − g_m‖²/K² = (2/K)·‖PJ‖_F²`` from all ``K`` input gradients."""
        num_classes = scores.shape[1]
        jacobian = torch.stack([torch.autograd.grad(scores[:, k].sum(), x, create_graph=True)[0].float().flatten(1)
                                for k in range(num_classes)], 1)  # (B, K, d)
        centred = jacobian - jacobian.mean(1, keepdim=True)
        return (2.0 / num_classes) * centred.pow(2).sum((1, 2))
