"""Exception and warning hierarchy.

Every error the package raises on purpose derives from :class:`GeoRasterQuantError`, and each
leaf also inherits the built-in it resembles, so ``except OSError`` or ``except ValueError``
keeps working for callers who do not know this package. The CLI maps the whole tree to exit
code 2 with the one-line message; messages name the file and say how to fix the problem.
"""

from __future__ import annotations


class GeoRasterQuantError(Exception):
    """Root of every error raised on purpose by georaster_quant."""


class RasterInputError(GeoRasterQuantError, OSError):
    """A raster cannot be opened or read (missing, unreadable, not a raster)."""


class RasterContractError(GeoRasterQuantError, ValueError):
    """A raster does not fit what it is combined with (labels grid, band count, class set)."""


class BandMismatchError(RasterContractError):
    """The raster's bands cannot be mapped onto the model's input bands."""


class BundleError(GeoRasterQuantError, ValueError):
    """A model bundle or exported file is missing, malformed or not written by us."""


class OutputPathError(GeoRasterQuantError, OSError):
    """The output path cannot be written (missing parent, parent is a file, exists)."""


class PublishError(OutputPathError):
    """A map cannot be published to object storage (no boto3, no access, upload failed)."""


class ConfigError(GeoRasterQuantError, ValueError):
    """A configuration file or option value is invalid."""


class TrainingDataError(GeoRasterQuantError, ValueError):
    """There is not enough usable labelled data to train or evaluate."""


class AccuracyBudgetError(GeoRasterQuantError, ValueError):
    """A quantized model cannot be kept within the accuracy budget."""


class NotFittedError(GeoRasterQuantError, ValueError):
    """A fit/transform object was used before it was fitted."""


class GeoRasterQuantWarning(UserWarning):
    """Root of every warning issued by georaster_quant."""


class RasterMismatchWarning(GeoRasterQuantWarning):
    """A raster differs from the model's training raster in dtype or pixel size."""


class CalibrationWarning(GeoRasterQuantWarning):
    """The calibration set is narrow, nodata-heavy, or leaves observers unused."""
