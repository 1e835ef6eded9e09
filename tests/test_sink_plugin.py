"""Third-party sinks through the ``receiver.sinks`` entry-point group (SPEC §5).

The example plugin lives in ``tests/plugin_example``: a ``pyproject.toml`` that declares

    [project.entry-points."receiver.sinks"]
    memory = "receiver_memory_sink:MemorySink"

and ``receiver_memory_sink.py``, whose whole sink is::

    class MemorySink:
        stores: ClassVar[dict[str, dict[str, Record]]] = {}

        def __init__(self, url: str, settings: Any) -> None:
            self.records = self.stores.setdefault(url, {})

        async def apply(self, record: Record) -> ApplyOutcome:
            stored = self.records.get(record.record_key)
            if stored is None or record.is_newer_than(stored.status, stored.source_updated_at):
                self.records[record.record_key] = record
                return ApplyOutcome.APPLIED
            if stored.last_event_id == record.last_event_id:
                return ApplyOutcome.APPLIED
            return ApplyOutcome.STALE

        async def ping(self) -> None: ...
        async def setup(self) -> None: ...
        async def aclose(self) -> None: ...

Installing it with pip in a test is slow, so the fixture does what pip would leave
behind: a ``*.dist-info`` directory with ``entry_points.txt`` (written from the plugin's
own ``pyproject.toml``) on ``sys.path``, where ``importlib.metadata`` finds it.
"""

from __future__ import annotations

import sys
import tomllib
import uuid
from collections.abc import AsyncIterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from receiver.errors import ConfigError
from receiver.models import ApplyOutcome
from receiver.sinks.base import ENTRY_POINT_GROUP, SinkFactory, find_factory, open_sink
from tests.sink_contract import Backend, SinkContract, make_record, new_key, sink_settings

PLUGIN_DIR = Path(__file__).parent / "plugin_example"


def install_metadata(site: Path) -> None:
    """Write the dist-info pip would install for the example plugin."""
    project = tomllib.loads((PLUGIN_DIR / "pyproject.toml").read_text())["project"]
    dist_info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines: list[str] = []
    for group, entries in project["entry-points"].items():
        lines += [f"[{group}]", *(f"{name} = {target}" for name, target in entries.items())]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def memory_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SinkFactory:
    """The plugin made discoverable, as if pip-installed; returns its factory."""
    install_metadata(tmp_path / "site")
    monkeypatch.delitem(sys.modules, "receiver_memory_sink", raising=False)
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return find_factory("memory")


@pytest.fixture
async def backend(memory_factory: SinkFactory, tmp_path: Path) -> AsyncIterator[Backend]:
    url = f"memory://{uuid.uuid4().hex}"
    settings = sink_settings(tmp_path, url)
    stores: dict[str, dict[str, Any]] = memory_factory.stores  # type: ignore[attr-defined]

    async def read(key: str) -> dict[str, Any] | None:
        stored = stores.get(url, {}).get(key)
        return None if stored is None else stored.to_json()

    backend = Backend(lambda: memory_factory(url, settings), read)
    yield backend
    await backend.aclose()
    stores.pop(url, None)


class TestContract(SinkContract):
    """The plugin passes the same contract as the built-in sinks."""


class TestDiscovery:
    def test_found_by_entry_point(self, memory_factory: SinkFactory) -> None:
        """find_factory returns the class the entry point names."""
        assert memory_factory.__module__ == "receiver_memory_sink"
        assert memory_factory.__name__ == "MemorySink"  # type: ignore[attr-defined]

    async def test_opened_from_settings(self, memory_factory: SinkFactory, tmp_path: Path) -> None:
        """RECEIVER_SINK=memory://… opens the plugin, which then works."""
        sink = open_sink(sink_settings(tmp_path, "memory://from-settings"))
        assert type(sink) is memory_factory
        record = make_record(new_key(), "queued")
        assert await sink.apply(record) is ApplyOutcome.APPLIED

    def test_listed_among_known_schemes(self, memory_factory: SinkFactory) -> None:
        """An unknown scheme's error lists the plugin's scheme next to the built-ins."""
        with pytest.raises(ConfigError, match="memory"):
            find_factory("nosuchscheme")

    def test_absent_without_metadata(self) -> None:
        """Without the installed metadata the scheme is unknown."""
        assert "memory" not in {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
        with pytest.raises(ConfigError, match="no sink for scheme 'memory'"):
            find_factory("memory")
