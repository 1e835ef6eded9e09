"""receiver: a strict, durable webhook receiver for Rivya generation callbacks."""

from receiver.app import create_app
from receiver.settings import Settings

__all__ = ["Settings", "create_app"]
