"""Adversarial evaluation: robust accuracy over ε, minimal adversarial distances, gradient-masking checks.

:func:`evaluate` attacks any classifier on images in [0, 1] (a :class:`~robustproto.ProtoModel`
has its normalisation inside, so ε is in pixel units) with torchattacks and returns a report:

- ``results``: robust accuracy per attack, norm and ε, over the *whole* evaluated subset: clean
  misclassified points count as failures, attacks run only on the correctly classified ones.
- ``median_distance``: Saralajew et al. 2019's median-δ per norm and attack (δ = 0 for a misclassified
  point, the distance of the adversarial found, ∞ if none) and the ``worst_case`` (per sample the
  minimum over the attacks of that norm, then the median); ``threshold_accuracy`` the fraction of
  points whose δ exceeds the threshold (defaults t₂ = 1.5, t∞ = 0.3). Minimal-perturbation attacks
  (DeepFool, CW, FAB) give δ directly (each one's ``failures`` are counted); a fixed-budget attack's δ
  is the smallest adversarial it produced over the ε grid, refined by a per-sample bisection on ε only
  when ``bisection_steps > 0`` asks for it (each step costs up to one more attack run), searched up to
  the largest ε of the grid (or, without a grid, the largest possible distance in [0, 1]ᵈ).
- ``unfinished``: only in the reports handed to ``partial_report`` while the attacks run (``robustproto eval``
  writes each one to ``--report``): the attacks (``name/norm``) not yet run; a report without it is complete.
- ``warnings``: signals of gradient masking (a black-box attack beats a white-box one at the same
  ε; robust accuracy rising with ε; accuracy above the best constant guess at an ε that reaches the
  mid-grey image), a weakened AutoAttack, and CE-only evaluations.

Gradient attacks (FGSM, FGM, BIM, MIM, PGD, PGD-L2) take a ``loss``: ``ce``, ``margin`` or ``ce+margin``
(per point the worst of both); the default ``auto`` is ``ce`` for heads whose scores are softmax logits
and ``ce+margin`` otherwise, because cross-entropy on prototype scores measures their scale, not
robustness (see :func:`robustproto.attacks.attack_loss`). ``fgsm@margin`` names an attack with its loss, so one report can
hold both. Every result row records the loss it used.

The model is attacked in eval mode: every wrapper is built in eval mode and the model is put back in
eval mode after every attack call (torchattacks restores the mode its wrapped module had), so no
dropout or batch statistics touch an attack or its verification; on return every module's mode and
every parameter's ``requires_grad`` are as they were. Randomness (random starts, Square) is seeded by
``seed`` in a forked RNG: identical calls give identical reports.

Every attack's output is checked by re-running the model on the returned images: a perturbation
larger than ε, outside [0, 1] or not finite (beyond a float tolerance of 1e-5 absolute + 1e-5
relative) is an :class:`~robustproto.errors.AttackError` (with ``strict=False`` the point counts as not broken and a
warning is added); an excess within the tolerance is projected back onto the ε-ball and the box
before the model is re-run, so every counted adversarial is valid. At ε = 0 the clean image is the only
admissible input, so no attack is called there (some divide by ε).

``∞`` is kept as ``float("inf")`` in the returned dict; :func:`report_json` (used by
``robustproto eval --report``) writes it as the string ``"inf"`` so the file is valid JSON.

The parts, one module per concern: :mod:`robustproto.attacks` (the attack menu and builders),
:mod:`.runner` (data, verified attack runs, bisection), :mod:`.distances` (median-δ, worst case, threshold
accuracy), :mod:`.masking` (one function per gradient-masking signal), :mod:`.report` (JSON, curves, example
grids), :mod:`.core` (:func:`evaluate`) and :mod:`.robustbench` (RobustBench's rules and model_info
JSON, ``robustproto eval --protocol robustbench``).
"""

from .core import evaluate
from .distances import distance_summary, median, per_point, robust_accuracy_at
from .masking import masking_warnings
from .report import (model_name, report_json, robustness_figure, save_example_grid, save_robustness_curves,
                     to_jsonable, write_report)
from .runner import ABS_TOL, REL_TOL, AttackRunner, Outcome, Sweep, collect, predict, run_attack, sweep, verify

__all__ = ["ABS_TOL", "REL_TOL", "AttackRunner", "Outcome", "Sweep", "collect", "distance_summary", "evaluate",
           "masking_warnings", "median", "model_name", "per_point", "predict", "report_json", "robust_accuracy_at",
           "robustness_figure", "run_attack", "save_example_grid", "save_robustness_curves", "sweep", "to_jsonable",
           "verify", "write_report"]
