"""The exception for user-facing mistakes; the CLI prints its message, not a traceback."""


class PipelineError(Exception):
    """A problem the user can fix (bad input file, missing weights, ...); the message says how."""
