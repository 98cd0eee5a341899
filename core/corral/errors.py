"""Errors that end a command or a start-up with a message for the operator."""


class ConfigError(Exception):
    """A setting, flag or config file is wrong; the message names it and the fix."""


class AppImportError(Exception):
    """APP_MODULE cannot be imported or does not name a callable."""


class PluginError(Exception):
    """A plugin could not be loaded or does not fit this corral."""


class HaltServer(Exception):
    """Stop the arbiter with ``reason`` and exit ``exit_status``."""

    def __init__(self, reason: str, exit_status: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_status = exit_status
