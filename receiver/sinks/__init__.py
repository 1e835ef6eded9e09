"""Sinks: where each event's normalized record lands (SPEC §5)."""

from receiver.sinks.base import Sink, SinkFactory, open_sink

__all__ = ["Sink", "SinkFactory", "open_sink"]
