"""User-facing errors: caught in ``main_pcl.py`` and printed as one line, no traceback."""


class PCLError(Exception):
    """A problem with the user's input or environment (bad data, impossible config, disk full)."""


class NonFiniteError(PCLError):
    """Training produced non-finite values for too many consecutive steps."""
