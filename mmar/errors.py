"""Errors that name what is wrong and how to fix it.

`ConfigError` is raised for bad user input (paths, configs, shapes that do not fit together). The CLI
and scripts print it as a single `error: ...` line instead of a stack trace (`run_or_exit`).
"""

import sys
from collections.abc import Callable
from typing import TypeVar

Args, Result = TypeVar("Args"), TypeVar("Result")


class ConfigError(ValueError):
    """A user-facing configuration or input error; its message names the field and the fix."""


def run_or_exit(run: Callable[[Args], Result], args: Args) -> Result:
    """`run(args)`; a ConfigError becomes one `error: ...` line on stderr and exit status 2."""
    try:
        return run(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
