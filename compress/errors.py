"""Error types, free of heavy imports so the torch-less commands (verify, predict, bench) can use them."""


class CompressError(RuntimeError):
    """A problem the user can fix; the message says what was wrong and how to fix it."""


class DatasetError(CompressError):
    """The dataset is missing or unreadable; the message says how to get it."""


class TeacherError(CompressError):
    """The teacher checkpoint is missing, altered or unreadable; the message says how to fix it."""


class ParityError(CompressError):
    """The exported model does not compute what the PyTorch model computes."""


class BundleError(CompressError):
    """An artifact bundle failed verification, or an input does not fit its model."""


class RecipeError(CompressError, ValueError):
    """A recipe that cannot be used; the message names the key path, the value and what is allowed."""


class TargetError(CompressError):
    """The requested device (or a model's format on it) cannot be measured on this machine."""


class ModelFileError(CompressError):
    """A file given as a model is not one that can be loaded (not ONNX, corrupt, wrong input)."""
