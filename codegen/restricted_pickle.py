"""Unpickling checkpoint files as data, never code.

Torch (`.bin`, `.pt`) and Paddle (`.pdparams`) checkpoints are pickles, and a pickle may
name any global and call it. Each format's reader gives `RestrictedUnpickler` the few
globals its state dicts need, mapped to harmless stand-ins; naming any other global is
refused, by name, before anything is imported or called.
"""
from __future__ import annotations

import pickle
from typing import Callable

# Bounds every size, stride and offset far above any real tensor (2**48 elements is a
# petabyte of float32), so numpy's byte arithmetic on them cannot overflow.
MAX_INDEX = 1 << 48


class CheckpointError(ValueError):
    """A checkpoint or config that cannot be used: one line naming the file and the problem."""

    def __init__(self, message: str):
        # nested library errors may span lines; the user gets one
        super().__init__(" ".join(str(message).split("\n")))


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler of the file at `path` that resolves only the globals in `allowed`
    ((module, name) -> what it becomes)."""

    def __init__(self, file, path, allowed: dict):
        super().__init__(file)
        self.path, self.allowed = path, allowed

    def find_class(self, module, name):
        allowed = self.allowed.get((module, name))
        if allowed is None:
            raise CheckpointError(f"{self.path}: refuses global {module}.{name}: "
                                  f"a checkpoint may hold tensors and plain data only")
        return allowed


# what a malformed pickle makes the unpickler (or the allowed stand-ins) raise; MemoryError:
# a length field can declare more bytes than exist, which the unpickler allocates up front
_MALFORMED_PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError,
                            IndexError, RecursionError, MemoryError)


def unpickle_checkpoint(path, kind: str, load: Callable, reading_errors: tuple = ()):
    """`load()`, whatever a damaged file makes it raise (a malformed pickle, or `reading_errors`
    from the container) turned into one line: "PATH: corrupt KIND checkpoint (what)"."""
    try:
        return load()
    except CheckpointError:
        raise
    except (*reading_errors, *_MALFORMED_PICKLE_ERRORS) as e:
        detail = e if isinstance(e, pickle.UnpicklingError) else f"{type(e).__name__}: {e}"
        raise CheckpointError(f"{path}: corrupt {kind} checkpoint ({detail})") from e
