"""Old import path of the server step, now ``byzance.round.server`` (kept as an alias)."""

from byzance.round.server import Server, lr_at

__all__ = ["Server", "lr_at"]
