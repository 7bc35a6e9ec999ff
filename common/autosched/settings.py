"""The one settings object (environment variables prefixed ``AUTOSCHED_``)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUTOSCHED_", extra="ignore")

    # Hardware overrides for static scheduling; None means detect from the host.
    num_cores: int | None = Field(default=None, ge=1)
    vector_bits: int | None = Field(default=None, ge=64)
    l1_bytes: int | None = Field(default=None, ge=1024)
    l2_bytes: int | None = Field(default=None, ge=1024)

    # Wire-format limits: a compute declaration over any of these is refused before building.
    max_stages: int = 256
    max_rank: int = 8
    max_expr_depth: int = 64
    max_expr_nodes: int = 20_000
    max_tensor_bytes: int = 4 * 1024**3
    max_total_bytes: int = 16 * 1024**3
    max_json_bytes: int = 4 * 1024**2


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
