"""The one exception type users see: the CLI prints its message on one line, never a traceback."""


class PipelineError(Exception):
    """Bad input or a refused operation. The message names the file, line, column or key."""


def sql_error(e: Exception) -> str:
    """One line for a failed DuckDB statement: its error's first line, or what a UnicodeDecodeError
    raised in its place means."""
    if isinstance(e, UnicodeDecodeError):
        # DuckDB quotes the input it failed on cut to a byte count, which can split a character;
        # its Python binding then cannot decode the message at all.
        return ("DuckDB failed on non-ASCII text and its error message was cut mid-character; a JSON function "
                "given text that is not JSON does this: guard it with json_valid(...) or TRY(...)")
    return str(e).strip().splitlines()[0]
