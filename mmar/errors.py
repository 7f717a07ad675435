"""Errors that name what is wrong and how to fix it.

`ConfigError` is raised for bad user input (paths, configs, shapes that do not fit together). The CLI
and scripts print it as a single `error: ...` line instead of a stack trace.
"""


class ConfigError(ValueError):
    """A user-facing configuration or input error; its message names the field and the fix."""
