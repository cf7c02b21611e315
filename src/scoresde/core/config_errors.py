"""The error of a bad setting: one class for the config, its overrides and the sampler options.

Torch-free, at the bottom of the package, so that every module that checks a setting raises the
same error (a ``ValueError`` whose message is one line meant for the user).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad override or config file; the message is one line meant for the user."""
