"""Errors and warnings raised by the dataset loaders."""

from __future__ import annotations


class DataError(ValueError):
    """A dataset could not be loaded: missing directory or file, or a malformed file.

    The message names the path that was expected, the layout the loader understands, and what to
    do about it (usually: pass ``--data-dir DIR`` containing the files).
    """


class DataWarning(UserWarning):
    """A dataset loaded, but something about it is unusual (e.g. fewer samples than the official split)."""
