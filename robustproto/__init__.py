"""robustproto: prototype heads and Lipschitz-type training for any timm backbone.

The core knows no concrete head or regularizer: they are plugins found through the
entry-point groups ``robustproto.heads``, ``robustproto.regularizers`` and
``robustproto.backbones`` (see :mod:`robustproto.registry`).
"""

from importlib.metadata import PackageNotFoundError, version as _version

from .certify import certify
from .checkpoint import load
from .config import TrainConfig
from .evaluate import evaluate  # torchattacks is imported only when an attack is built
from .head import Head, affine_margin, squared_euclidean, working_dtype
from .lipschitz import lipschitz_upper_bound
from .model import Normalize, ProtoModel, create_backbone, create_head, create_regularizer, wrap
from .registry import PluginError, list_plugins, load_backbones, refresh_plugins
from .regularizer import Regularizer, StepContext
from .train import train  # Accelerate is imported only when a run starts

try:
    __version__ = _version("robustproto")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "Head",
    "Normalize",
    "PluginError",
    "ProtoModel",
    "Regularizer",
    "StepContext",
    "TrainConfig",
    "__version__",
    "affine_margin",
    "certify",
    "create_backbone",
    "create_head",
    "create_regularizer",
    "evaluate",
    "lipschitz_upper_bound",
    "list_plugins",
    "load",
    "load_backbones",
    "refresh_plugins",
    "squared_euclidean",
    "train",
    "working_dtype",
    "wrap",
]
