"""The errors a user can fix. The command line prints them as one line (``error: ...``, exit code 2); every other
exception is a bug and keeps its traceback. Each subclasses the built-in error it refines, so ``except ValueError``
written against earlier versions still catches a bad option.

This module imports nothing from the package: every layer may raise these.
"""

from __future__ import annotations

__all__ = ["AttackError", "MissingFileError", "NonFiniteLossError", "PluginError", "RobustProtoError", "UsageError"]


class RobustProtoError(Exception):
    """Base of every user-facing error; its message names the option (or file) and what to do."""


class UsageError(RobustProtoError, ValueError):
    """An option, recipe key or input has a value robustproto cannot use."""


class MissingFileError(RobustProtoError, FileNotFoundError):
    """A file or folder the user named (recipe, run folder, checkpoint, data) is not there."""


class PluginError(RobustProtoError, LookupError):
    """A plugin is unknown, failed to load, or is not what its group expects."""


class AttackError(RobustProtoError, RuntimeError):
    """An attack returned images outside its budget or the [0, 1] box: its result cannot be counted."""


class NonFiniteLossError(RobustProtoError, RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""
