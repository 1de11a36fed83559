"""The one exception family every user-facing failure is raised as.

The CLI and the daemon print ``str(error)`` as a single line and exit with
``error.exit_code``; anything else escaping is a bug, not a user error.
"""


class EdgescribeError(Exception):
    """A failure the user can act on; its message names what is wrong and where."""

    exit_code = 1


class ModelSourceError(EdgescribeError):
    """Weights could not be found or read (bad path, corrupt model.bin, unknown format)."""


class ModelPackageError(EdgescribeError):
    """A model package is missing a file, has a corrupt one, or has a bad manifest."""


class AudioInputError(EdgescribeError):
    """An audio file or device could not be read."""


class ConfigError(EdgescribeError):
    """The configuration file is invalid; exit status 2 as the CLI convention for usage errors."""

    exit_code = 2


class BackendUnavailableError(EdgescribeError):
    """The requested inference backend (TensorRT, GPU) is not usable on this machine."""
