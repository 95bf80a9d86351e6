"""The one exception type users see: the CLI prints its message on one line, never a traceback."""


class PipelineError(Exception):
    """Bad input or a refused operation. The message names the file, line, column or key."""
