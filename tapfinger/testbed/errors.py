"""The profiler's one error type, shared by its modules (models, measurement, files, the run)."""


class ProfilerError(RuntimeError):
    """A profiling run cannot proceed: the message says what is wrong and how to fix it."""
