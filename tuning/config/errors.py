"""The one error a user must fix: a config file, flag, override or input."""


class ConfigError(ValueError):
    """A config file, flag or override the user must fix; the message says how."""
