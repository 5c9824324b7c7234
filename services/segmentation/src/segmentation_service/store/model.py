"""Segmentation's records, as both backends read and write them."""

from __future__ import annotations

from dataclasses import dataclass

Timer = tuple[int, int, str]  # (partition, bucket, profile id)
Decided = dict[str, tuple[bool, int]]  # segment id -> (member, profile version decided at)


@dataclass(frozen=True)
class Transition:
    segment_id: str
    profile_id: str
    partition: int
    entered: bool
    version: int
    cause: str

    @property
    def message_id(self) -> str:
        return f"{self.segment_id}:{self.profile_id}:{self.cause}"
