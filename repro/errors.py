"""The one exception type for bad input: one clear message, exit code 2."""
import click


class UserError(click.ClickException):
    """Bad input (unknown block, missing file, wrong hash, mismatched store). Exits with code 2."""

    exit_code = 2
