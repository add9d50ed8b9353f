"""SQLAlchemy models of the agent's local state. Schema changes go through Alembic."""
import datetime

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Instance(Base):
    __tablename__ = "instances"

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    host: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(32))
    task_state: Mapped[str | None] = mapped_column(String(32), nullable=True)
    power_state: Mapped[str] = mapped_column(String(32), default="NOSTATE")
    flavor: Mapped[dict] = mapped_column(JSON, default=dict)
    image: Mapped[dict] = mapped_column(JSON, default=dict)
    networks: Mapped[list] = mapped_column(JSON, default=list)
    meta: Mapped[dict] = mapped_column("metadata", JSON, default=dict)
    disk_path: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    base_path: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    fault: Mapped[str | None] = mapped_column(Text, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # 1.4 config drive: whether the instance has one, and its user data (base64)
    config_drive: Mapped[bool] = mapped_column(Boolean, default=False)
    user_data: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow,
                                                          onupdate=utcnow)


class Migration(Base):
    __tablename__ = "migrations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    instance_uuid: Mapped[str] = mapped_column(String(36), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(255))
    dest: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(32))
    step: Mapped[str | None] = mapped_column(String(64), nullable=True)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    data_total: Mapped[int] = mapped_column(Integer, default=0)
    data_processed: Mapped[int] = mapped_column(Integer, default=0)
    data_remaining: Mapped[int] = mapped_column(Integer, default=0)
    disk_total: Mapped[int] = mapped_column(BigInteger, default=0)
    disk_processed: Mapped[int] = mapped_column(BigInteger, default=0)
    memory_processed: Mapped[int] = mapped_column(BigInteger, default=0)
    downtime_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    old_flavor: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    new_flavor: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    extra: Mapped[dict] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime.datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow,
                                                          onupdate=utcnow)


class ImageCacheEntry(Base):
    """One image's pre-cache state on this host (issue 14). The base file and its
    sidecar stay the truth about what is cached; this record says what was asked,
    how far it got and why it failed."""
    __tablename__ = "image_cache"

    image_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # queued downloading cached failed
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    disk_format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    source: Mapped[str | None] = mapped_column(String(300), nullable=True)
    failure_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    pinned_until: Mapped[datetime.datetime | None] = mapped_column(DateTime,
                                                                   nullable=True)
    last_used: Mapped[datetime.datetime | None] = mapped_column(DateTime, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    image: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow,
                                                          onupdate=utcnow)
