"""The admin listener: the web console, its JSON API, ``/metrics`` and detailed readiness."""

from receiver.console.app import AdminApp, create_admin_app

__all__ = ["AdminApp", "create_admin_app"]
