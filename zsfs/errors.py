"""User-facing errors: the CLI prints their message (no traceback) and exits non-zero."""


class ZsfsError(Exception):
    """An error whose message tells the user what went wrong and what to do about it."""


class StoreError(ZsfsError):
    """A store is missing, damaged, or not what the caller expected."""


class StoreMismatchError(StoreError):
    """An existing store or shard was built from another source or other models."""


class ModelLoadError(ZsfsError):
    """A model name is unknown or its weights cannot be found, downloaded or loaded."""
