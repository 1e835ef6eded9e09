"""Reconciliation (issue 16): poll Rivya's status API for tasks whose webhook never came.

``reconciler`` runs the loop, ``api`` talks to Rivya, ``events`` turns answers into
``rivya-poll`` events, ``schedule`` says when a task is checked again, ``status`` reads
the watch list and the gate for ``status``, the console and the gauges. The watch list
itself and the shared gate are parts of the event store (``receiver/store/watch.py``,
``receiver/store/pollgate.py``).
"""
