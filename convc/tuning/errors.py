"""Why tuning cannot go on, for every module of the tuner and its callers."""


class TuneError(RuntimeError):
    """Tuning cannot start (no device to measure on, no RPC server, ...)."""
