"""Exceptions that the CLI turns into one-line messages and a non-zero exit."""


class DiffcodecError(Exception):
    """Base class of every error diffcodec reports to a user (bad input, bad files)."""


class CheckpointError(DiffcodecError):
    """A model file that is missing, corrupt, or not a diffcodec checkpoint."""


class FormatError(DiffcodecError):
    """A .dfc file that is not one, is corrupt, or was made with another model."""


class ImageError(DiffcodecError):
    """An input image that cannot be read or is of an unsupported kind."""


class OptionError(DiffcodecError):
    """An option or argument that cannot be honoured (an effort out of range, a chain that cannot exist)."""
