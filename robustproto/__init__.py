"""robustproto: prototype heads and Lipschitz-type training for any timm backbone.

The core knows no concrete head or regularizer: they are plugins found through the
entry-point groups ``robustproto.heads``, ``robustproto.regularizers`` and
``robustproto.backbones`` (see :mod:`robustproto.registry`).
"""

from importlib.metadata import PackageNotFoundError, version as _version

from .attacks import ATTACKS, attack_loss, build_attack  # torchattacks is imported only when an attack is built
from .certify import certify, certify_summary
from .checkpoint import load
from .config import CertifyConfig, EvalConfig, Recipe, TrainConfig, load_recipe
from .errors import AttackError
from .evaluation import evaluate, report_json, robustness_figure, save_robustness_curves, write_report
from .export import export
from .head import Head, affine_margin, squared_euclidean, working_dtype
from .lipschitz import lipschitz_upper_bound
from .model import Normalize, ProtoModel, wrap
from .registry import (PluginError, create_backbone, create_head, create_regularizer, list_plugins, load_backbones,
                       refresh_plugins, register_head, register_regularizer)
from .regularizer import BatchContext, RegularizedModel, Regularizer, StepContext
from .training import (  # Accelerate is imported only when a run starts
    TrainResult, TrainStep, compute_losses, init_head_from_data, train, train_one_epoch)

try:
    __version__ = _version("robustproto")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "BatchContext",
    "ATTACKS",
    "AttackError",
    "CertifyConfig",
    "EvalConfig",
    "Head",
    "Normalize",
    "PluginError",
    "ProtoModel",
    "Recipe",
    "RegularizedModel",
    "Regularizer",
    "StepContext",
    "TrainConfig",
    "TrainResult",
    "TrainStep",
    "__version__",
    "affine_margin",
    "attack_loss",
    "build_attack",
    "certify",
    "certify_summary",
    "compute_losses",
    "create_backbone",
    "create_head",
    "create_regularizer",
    "evaluate",
    "export",
    "init_head_from_data",
    "lipschitz_upper_bound",
    "list_plugins",
    "load",
    "load_backbones",
    "load_recipe",
    "refresh_plugins",
    "register_head",
    "register_regularizer",
    "report_json",
    "robustness_figure",
    "save_robustness_curves",
    "squared_euclidean",
    "train",
    "train_one_epoch",
    "working_dtype",
    "wrap",
    "write_report",
]
