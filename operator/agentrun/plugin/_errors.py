"""The one error the plugin shows its user: a sentence, and exit status 1."""

from __future__ import annotations

__all__ = ["PluginError"]


class PluginError(Exception):
    """Something the user asked for cannot be done; the message says what and why.

    The commands print it as one line on stderr and exit 1, without a traceback.
    """
