"""One module per ``statmech-nn`` command; the options they share live in ``options``."""

from __future__ import annotations

from statmech_nn.commands.options import TRACKING_URI_HELP, add_tracking_uri

__all__ = ["TRACKING_URI_HELP", "add_tracking_uri"]
