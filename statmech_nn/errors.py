"""Exceptions that the CLI turns into one clear line and a non-zero exit code."""


class StatmechError(Exception):
    """Base class: a problem the user can fix; the message says how."""


class UnknownNameError(StatmechError, ValueError):
    """A model, dataset, site or option name that does not exist."""


class DatasetNotFoundError(StatmechError, FileNotFoundError):
    """A dataset is not under its data root (and downloading was not asked for)."""


class CheckpointError(StatmechError):
    """A checkpoint that is missing, corrupt, or belongs to another model."""


class SchemaError(StatmechError):
    """A file that is not what it claims to be (e.g. a netCDF that is not an SNP tensor)."""


class TrackingError(StatmechError):
    """A tracking store or run that cannot be reached or found."""


class TrainingDiverged(StatmechError):
    """Training produced a non-finite loss."""


class ConfigError(StatmechError, ValueError):
    """An option or configuration value that cannot work (``--epochs 0``, ``--chunk-size 0``...)."""


class ThresholdError(ConfigError):
    """A binarisation threshold outside (0, 1)."""
