"""The one error type for a bad user setting.

A `ConfigError` is a value the user chose (a gin binding, a flag, a config field) that
toxjax refuses before doing expensive work. Entry points (`toxjax train`, `compile-check`,
`eval`, `demo`) catch it and print one line naming the setting, exit code 2; library
callers can catch it as the `ValueError` it also is.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A user setting that toxjax cannot run; the message names the setting and the options."""


class Refused(SystemExit):
    """A command's one-line refusal of what the user asked (bad flag, file or checkpoint).

    A `SystemExit` carrying its message (so code that raises `SystemExit("<prog>: ...")`
    can raise this instead and callers that catch `SystemExit` still see the message);
    `toxjax.cli.main` prints it and exits 2, the code for bad input, where a plain
    `SystemExit(message)` would exit 1 like a crash.
    """
