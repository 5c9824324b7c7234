"""Audience syncs to files, the way audiences reach ad platforms by upload: each batch of adds
and removes becomes one file of its own (CSV or JSON Lines) in the destination's folder.

A file is written under a hidden temporary name, flushed to disk and renamed (atomic on POSIX),
so an uploader watching the folder never sees half a file. Its name is the batch's first
queue time and a hash of its delivery ids: names sort in batch order, and a batch written
again after a crash (before its jobs were acked) replaces its own file instead of adding one.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
from pathlib import Path

from delivery_service.webhook import Retryable
from mosaic.delivery.v1 import delivery_pb2

Format = delivery_pb2.AudienceFileFormat
EXTENSIONS: dict[int, str] = {Format.AUDIENCE_FILE_FORMAT_CSV: "csv", Format.AUDIENCE_FILE_FORMAT_JSONL: "jsonl"}


class AudienceFiles:
    def __init__(self, directory: Path | None, file_format: int) -> None:
        self.directory = directory
        self.file_format = file_format

    @classmethod
    def of(cls, destination: delivery_pb2.Destination, root: Path | None) -> AudienceFiles | None:
        """The files of an audience sync with a file_format, under `root` (the deployment's
        MOSAIC_DELIVERY_AUDIENCE_DIR); None for any other destination."""
        if not destination.audience.file_format:
            return None
        return cls(root / destination.destination_id if root else None, destination.audience.file_format)

    async def write(self, jobs: list[delivery_pb2.DeliveryJob], key: str) -> str:
        """Write one batch; what was written. Retryable when the folder cannot take it."""
        if self.directory is None:
            raise Retryable("audience file not written: MOSAIC_DELIVERY_AUDIENCE_DIR is not set")
        try:
            return await asyncio.to_thread(self._write, jobs, key)
        except OSError as error:
            raise Retryable(f"audience file not written: {error}") from error

    def _write(self, jobs: list[delivery_pb2.DeliveryJob], key: str) -> str:
        assert self.directory is not None
        latest = {job.profile_id: job for job in jobs}  # a person's last change in the batch wins
        rows = [(p, "remove" if job.exited else "add", job.text) for p, job in sorted(latest.items())]
        first = min(job.queued_at.ToDatetime() for job in jobs)
        name = f"{first:%Y%m%dT%H%M%S%f}Z-{key.rsplit(':', 1)[-1][:16]}.{EXTENSIONS[self.file_format]}"
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.directory / f".{name}.partial"
        with partial.open("w", encoding="utf-8", newline="") as file:
            file.write(self._text(rows))
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, self.directory / name)
        folder = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself survives a crash
        finally:
            os.close(folder)
        return f"file {name}: {len(rows)} rows"

    def _text(self, rows: list[tuple[str, str, str]]) -> str:
        if self.file_format == Format.AUDIENCE_FILE_FORMAT_JSONL:
            return "".join(
                json.dumps({"profile_id": p, "action": action, "data": data}, ensure_ascii=False) + "\n"
                for p, action, data in rows
            )
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(("profile_id", "action", "data"))
        writer.writerows(rows)
        return out.getvalue()
