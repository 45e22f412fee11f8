"""User-facing errors.

Every problem a user can fix (a missing file, a bad option, an image of the wrong shape) is
raised as an :class:`EntitwistError` whose message is one line naming the problem and the
fix. The ``entitwist`` command prints that line as ``entitwist: error: ...`` and exits with
status 2, without a traceback. Library callers catch it like any ``ValueError``.
"""

from __future__ import annotations


class EntitwistError(ValueError):
    """A problem with the user's input, configuration or files; the message says the fix."""


class InputError(EntitwistError):
    """An input tensor, image, sentence or entity map is malformed."""


class DataError(EntitwistError):
    """A dataset root, split file, image or mask is missing, corrupt or inconsistent."""


class CheckpointError(EntitwistError):
    """A checkpoint folder is missing files, is corrupt, or holds unsafe (pickled) content."""


class ConfigError(EntitwistError):
    """A configuration value is unknown or out of range."""
