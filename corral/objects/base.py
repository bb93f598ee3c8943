"""Common base of the stored configuration objects."""

from __future__ import annotations

import time
import uuid as uuidlib

from pydantic import BaseModel, ConfigDict, Field


def new_uuid() -> str:
    """A fresh random UUID string."""
    return str(uuidlib.uuid4())


class ConfigObject(BaseModel):
    """A stored object: unknown keys are refused, every change bumps ``serial_no``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    uuid: str = Field(default_factory=new_uuid)
    serial_no: int = 1
    ctime: float = Field(default_factory=time.time)
    mtime: float = Field(default_factory=time.time)
    tags: list[str] = Field(default_factory=list)

    def touch(self) -> None:
        """Record a modification (serial number and mtime)."""
        self.serial_no += 1
        self.mtime = time.time()
