"""Errors raised by the dataset loaders."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset cannot be loaded: bad name or argument, corrupted or truncated file."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The files of a dataset are missing (and could not be downloaded)."""


class ChecksumError(DatasetError):
    """A file's content does not match its published checksum."""
