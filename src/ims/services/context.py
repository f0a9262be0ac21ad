"""What every use case needs: the database, the S3 gateway and the settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from ims.artifacts.s3 import ArtifactStore, GuardedStore, S3Config
from ims.settings import Settings
from ims.store import loop_writes
from ims.store.db import Database
from ims.tasks.queue import TaskQueue

T = TypeVar("T")


def s3_config_from(settings: Settings) -> S3Config:
    return S3Config(
        endpoint=settings.s3_endpoint,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        verify=settings.s3_ssl_validate,
        connect_timeout=settings.s3_connect_timeout,
        read_timeout=settings.s3_read_timeout,
        url_expiration=settings.s3_url_expiration,
    )


def request_store(settings: Settings, store: ArtifactStore) -> GuardedStore:
    """S3 for calls a request waits on: short timeouts, no retries, a bounded number at once."""
    timeout = settings.s3_request_timeout
    config = replace(
        store.config,
        connect_timeout=min(store.config.connect_timeout, timeout),
        read_timeout=min(store.config.read_timeout, timeout),
        max_attempts=1,
    )
    return GuardedStore(ArtifactStore(config), settings.s3_request_concurrency)


@dataclass
class ServiceContext:
    settings: Settings
    database: Database
    # Background work (tasks, jobs): long timeouts and retries.
    artifacts: ArtifactStore
    queue: TaskQueue = field(init=False)
    # What requests use (see request_store).
    request_artifacts: GuardedStore = field(init=False)
    # Called after a transaction that queued work commits, so a worker in this process starts at once.
    on_task_queued: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.queue = TaskQueue(self.database)
        self.request_artifacts = request_store(self.settings, self.artifacts)

    def notify_tasks(self) -> None:
        """Wake the task workers, once the transaction that queued the tasks is durable."""
        self.database.after_commit(self._wake_task_workers)

    @property
    def writes_on_loop(self) -> bool:
        """Whether short writes may run on the event loop (see write_on_loop): on SQLite."""
        return self.database.sqlite_writer is not None

    async def write_on_loop(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn`, a use case whose only waits are the database's, on the running event loop in the loop's
        current batch of writes (ims.store.loop_writes); its result once the batch's commit is durable."""
        writer = self.database.sqlite_writer
        if writer is None:
            raise RuntimeError("writes run on the event loop only on SQLite")
        return await loop_writes.write_on_loop(writer, fn, *args, **kwargs)

    def _wake_task_workers(self) -> None:
        for callback in self.on_task_queued:
            callback()

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceContext:
        return cls(settings, Database(settings.effective_database_url), ArtifactStore(s3_config_from(settings)))
