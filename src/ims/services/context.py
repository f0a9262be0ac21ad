"""What every use case needs: the database, the S3 gateway and the settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ims.artifacts.s3 import ArtifactStore, S3Config
from ims.settings import Settings
from ims.store.db import Database
from ims.tasks.queue import TaskQueue


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


@dataclass
class ServiceContext:
    settings: Settings
    database: Database
    artifacts: ArtifactStore
    queue: TaskQueue = field(init=False)
    # Called after a transaction that queued work commits, so a worker in this process starts at once.
    on_task_queued: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.queue = TaskQueue(self.database)

    def notify_tasks(self) -> None:
        for callback in self.on_task_queued:
            callback()

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceContext:
        return cls(settings, Database(settings.effective_database_url), ArtifactStore(s3_config_from(settings)))
