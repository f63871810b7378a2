"""Hot reload: model versions added to or removed from the repository, served or unloaded without a restart.

A scan (every ``reload_interval_s``, and on each ``Models.Reload`` call; one at a time) compares the
version folders on disk (``<name>/<version>/manifest.json``) with the versions served:

- a new folder is validated by ``contract/repository.py`` (manifest, sha256 of every file, graphs), built,
  started and warmed up, and only then put into the repository, where it becomes the newest version at
  once for calls that name no version (the event loop switches it in one step);
- a folder that is gone is retired: no new call finds it, calls that hold a lease on it (``Served.busy``)
  finish on it, and it is unloaded (stopped, taken off ``/metrics``) once the last has ended;
- a version that fails validation is refused, logged with the file and field named and counted, and
  the versions served stay; it is tried again only once its files change (a copy that was not complete).

A version's files are not reloaded in place: a changed model is a new version number. A scan that finds
no version at all (an unmounted volume) changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from contract.repository import load_model, version_folders
from server.config import Config
from server.graph import session_factory
from server.metrics import Metrics
from server.repository import Repository, Served, build

log = logging.getLogger(__name__)

UNLOAD_CHECK_S = 0.05  # how often a retired version checks whether its last call has ended
Fingerprint = tuple[tuple[str, int, int], ...]


class Listener(Protocol):
    """What else must know the versions served (the KServe service's endpoints)."""

    def added(self, served: Served) -> None: ...

    def removed(self, served: Served) -> None: ...


@dataclass
class Outcome:
    """What a scan did: versions loaded and retired by it, and every refusal that stands (``{folder: error}``)."""

    loaded: list[Served] = field(default_factory=list)
    retired: list[Served] = field(default_factory=list)
    refused: dict[Path, str] = field(default_factory=dict)


def fingerprint(folder: Path) -> Fingerprint:
    """Name, size and modification time of each file in ``folder``: what tells that a refused version changed."""
    try:
        return tuple(sorted((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns)
                            for path in folder.rglob("*") if path.is_file() for stat in [path.stat()]))
    except OSError:  # removed meanwhile
        return ()


class Reloader:
    """Scans the model repository and applies what changed to ``repository`` (see the module docstring)."""

    def __init__(self, repository: Repository, config: Config, metrics: Metrics) -> None:
        self.repository, self.config, self.metrics = repository, config, metrics
        self.root = Path(config.models)
        self.sessions = session_factory(config)
        self.listeners: list[Listener] = []
        self.refused: dict[Path, tuple[Fingerprint, str]] = {}
        self.retiring: dict[Served, asyncio.Task] = {}
        self.lock = asyncio.Lock()
        self.poller: asyncio.Task | None = None
        self.stopping = False  # the retired versions unload now, busy or not

    def start(self) -> None:
        """Scan every ``reload_interval_s`` (0: never by itself)."""
        if self.config.reload_interval_s > 0:
            self.poller = asyncio.get_running_loop().create_task(self._poll(), name="hot reload")

    async def stop(self) -> None:
        """No more scans; the versions still retiring are unloaded now (the server is stopping)."""
        if self.poller is not None:
            self.poller.cancel()
            await asyncio.gather(self.poller, return_exceptions=True)
        async with self.lock:  # a Reload call in progress finishes first
            self.stopping = True
            await asyncio.gather(*self.retiring.values())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.reload_interval_s)
            try:
                await self.reload()
            except Exception:  # a scan that fails (the disk) is logged; the next one tries again
                log.exception("hot reload: the scan of %s failed", self.root)

    def serving(self) -> dict[Path, Served]:
        return {served.model.path: served for versions in self.repository.values() for served in versions.values()}

    async def reload(self) -> Outcome:
        """One scan: load the new versions, retire the removed ones."""
        async with self.lock:
            outcome = Outcome()
            on_disk = set(version_folders(self.root)) if self.root.is_dir() else set()
            if not on_disk:
                log.warning("hot reload: %s holds no model version now; keeping the %d served", self.root,
                            len(self.serving()))
            else:
                serving = self.serving()
                for folder in sorted(on_disk - serving.keys()):
                    if (served := await self._add(folder)) is not None:
                        outcome.loaded.append(served)
                for folder in sorted(serving.keys() - on_disk):
                    outcome.retired.append(self._retire(serving[folder]))
                for folder in set(self.refused) - on_disk:
                    del self.refused[folder]
            outcome.refused = {folder: error for folder, (_, error) in self.refused.items()}
            return outcome

    async def _add(self, folder: Path) -> Served | None:
        """Validate, build, start and warm up the version in ``folder``, then serve it; ``None`` if refused."""
        files = fingerprint(folder)
        if folder in self.refused and self.refused[folder][0] == files:
            return None  # refused already, and not changed since
        served: Served | None = None
        try:
            model = await asyncio.to_thread(load_model, folder, self.sessions)
            if model.version in self.repository.get(model.name, {}):
                other = self.repository[model.name][model.version].model.path
                raise ValueError(f"{folder / 'manifest.json'}: version {model.version} of {model.name!r} is served "
                                 f"already (from {other})")
            served = build(model, self.config, self.metrics)
            served.start()
            await asyncio.to_thread(served.warm_up)
        except BaseException as error:  # cancelled (the server stops) or refused: the versions served stay
            if served is not None:
                await served.unload()
            if not isinstance(error, Exception):
                raise
            self.refused[folder] = (files, str(error))
            self.metrics.reloads.labels(model=folder.parent.name, outcome="refused").inc()
            log.error("hot reload: refused %s, still serving the versions loaded before: %s", folder, error)
            return None
        self.refused.pop(folder, None)
        for listener in self.listeners:  # before the repository: whoever finds it there finds its endpoint too
            listener.added(served)
        self.repository.setdefault(model.name, {})[model.version] = served
        self.metrics.reloads.labels(model=model.name, outcome="loaded").inc()
        newest = max(self.repository[model.name])
        log.info("hot reload: loaded %s/%d from %s; the newest version of %s is %d", model.name, model.version,
                 folder, model.name, newest)
        return served

    def _retire(self, served: Served) -> Served:
        """No new call finds ``served``; it is unloaded once the calls and streams that use it have ended."""
        name, version = served.model.name, served.model.version
        versions = self.repository[name]
        del versions[version]
        if not versions:
            del self.repository[name]
        for listener in self.listeners:
            listener.removed(served)
        self.metrics.reloads.labels(model=name, outcome="retired").inc()
        log.info("hot reload: %s/%d was removed from disk: no new calls; unloaded once its %s", name, version,
                 "open calls end" if served.busy else "is idle")
        self.retiring[served] = asyncio.get_running_loop().create_task(self._unload(served), name=f"unload {name}")
        return served

    async def _unload(self, served: Served) -> None:
        while served.busy and not self.stopping:
            await asyncio.sleep(UNLOAD_CHECK_S)
        await served.unload()
        del self.retiring[served]
        self.metrics.reloads.labels(model=served.model.name, outcome="unloaded").inc()
        log.info("hot reload: unloaded %s/%d", served.model.name, served.model.version)
