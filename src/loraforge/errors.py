"""One exception type for every expected failure: its message is the one line a user sees."""


class PipelineError(Exception):
    """A failed check or bad input. ``str(err)`` names the file and the problem in one line."""
