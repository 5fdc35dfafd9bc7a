"""Errors in what the user gave (settings, checkpoints, tokenizers, problem files, a run folder to resume),
as opposed to bugs. The command line prints these as one line naming what and where, without a traceback
(`--debug` or HYDRA_FULL_ERROR=1 shows it)."""


class UserError(Exception):
    """Something the user gave is wrong; the message says what and where, and how to fix it if it can."""


class ConfigError(UserError, ValueError):
    """A config that composes but is wrong: unknown experiment, bad experiment option, bad value."""


class MissingDependencyError(UserError, ImportError):
    """An optional package that the feature asked for is not installed."""


def require(module: str, extra: str, feature: str):
    """`import module`, or a one-line error saying which extra of this package installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            f"{feature} needs the `{module}` package: pip install 'oversight[{extra}]'"
        ) from None
