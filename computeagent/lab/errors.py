"""Exceptions of the lab."""


class LabError(RuntimeError):
    """The lab cannot do what was asked; the message says why (and where the logs are)."""
