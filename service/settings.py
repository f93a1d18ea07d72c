"""Settings: one typed object, from `AIM_` environment variables and CLI flags, passed in.

Nothing here is read at import time; `Settings()` is built by the CLI (or a test) and handed to
the app factory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Server settings. Every field can be set as `AIM_<NAME>` in the environment."""

    # Docstrings become field descriptions: `aim serve --help` shows them.
    model_config = SettingsConfigDict(
        env_prefix="AIM_", extra="ignore", use_attribute_docstrings=True
    )

    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = Field(8000, ge=0, le=65535)
    """Port to listen on."""
    device: Literal["cpu", "cuda", "auto"] = "auto"
    """Where the model runs; `auto` takes CUDA when present."""
    config: Path | None = None
    """YAML service config (model and tiers). Unset: the bundled `digits` model with its
    default tiers."""
    keys_file: Path | None = None
    """YAML keys file (id, tier, sha256 per key; `aim keys create` writes it). Needed unless
    --demo is given."""
    secret: SecretStr | None = None
    """Server secret that keys the noise (environment only). Prefer --secret-file; needed
    unless --demo is given."""
    secret_file: Path | None = None
    """File holding the server secret (preferred over AIM_SECRET)."""
    demo: bool = False
    """Try-out mode: one throwaway key per tier (printed once at start) and a throwaway
    secret; no keys file or secret needed."""

    noise: Literal["keyed", "fresh"] = "keyed"
    """`fresh` draws new noise on every call: research use only (repeated queries undo it)."""
    max_batch_size: int = Field(32, ge=1, le=4096)
    """Most rows (inputs) in one forward pass."""
    max_wait_ms: float = Field(2.0, ge=0, le=1000)
    """How long the batcher waits for more requests once it has one. A slow model's batch may
    wait longer, up to a tenth of its recent batch time, but only while requests already inside
    the server are not yet in it (`serving/queue.py`, `collect_batch`)."""
    queue_size: int = Field(256, ge=1)
    """Most requests waiting for a forward pass, and most waiting at the edge for a slot; a
    full queue answers 503 at once."""
    max_in_flight: int | None = Field(None, ge=1)
    """Most inference requests running at once; more wait at the edge, highest tier first.
    Default: the batch size (--max-batch-size) while batches run on the event loop (CPU, see
    --forward-on-loop-ms: nothing overlaps a batch there), else twice it (one batch running
    on the forward thread, the next one filling)."""
    admission_wait_s: float = Field(1.0, gt=0, le=60)
    """How long a request may wait at the edge for a slot before it gets 503."""
    lower_tier_in_flight: int | None = Field(None, ge=1)
    """While requests wait and a higher tier is present that sent under a quarter of the last
    second's requests, tiers below it run at most as many requests as it does, or this many if
    that is more (every running request lengthens the event loop's turns, which the top tier
    waits on). Default: an eighth of the batch size (--max-batch-size)."""
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    """Larger request bodies get 413."""
    max_items: int = Field(64, ge=1)
    """Most inputs in one request, for every tier (a tier's config may set a lower limit)."""
    max_focus_entries: int = Field(16, ge=0)
    """Most focus entries in one request."""
    header_timeout_s: float = Field(10.0, gt=0, le=3600)
    """A request's headers must arrive within this many seconds of its first byte (slow
    clients are closed with 408)."""
    max_header_bytes: int = Field(16 * 1024, ge=1024)
    """Request line plus headers; larger gets 431."""
    keep_alive_s: float = Field(5.0, gt=0, le=3600)
    """Idle seconds between requests before a keep-alive connection is closed."""
    max_requests_per_connection: int = Field(10_000, ge=1)
    """Then the connection is closed (`connection: close` on the last answer)."""
    cache_dir: Path = Path.home() / ".cache" / "aim"
    """Where tier calibrations are cached (keyed by a hash of model and calibration inputs)."""
    forward_on_loop_ms: float = Field(10.0, ge=0, le=1000)
    """On CPU, a batch runs on the event loop itself (not the forward thread) while recent
    batches took under this many ms and less than a batch waits: small models then pay no GIL
    hand-offs. 0: always the thread. GPU models always use the thread."""
    workers: int = Field(1, ge=1, le=64)
    """Server processes on the port, each with its own copy of the model; more than one needs
    Redis (AIM_REDIS_URL), so that limits, quotas and usage are counted once for all."""
    torch_threads: int | None = Field(None, ge=1, le=256)
    """Intra-op threads of the forward pass on CPU. Default: every core for a compute-bound
    model (a warm batch of 8 slower than `forward_on_loop_ms`), else half the cores (at least
    1), so the other half serves HTTP; small models batch better than they parallelise."""
    log_level: str = "INFO"
    """Level of the JSON logs on stderr."""

    redis_url: SecretStr | None = None
    """Redis shared by every replica (`redis://host:6379/0`): rate limits, quotas and usage
    (environment only: the URL may hold a password). Unset: that state is this process's own
    (one replica)."""
    state_dir: Path | None = None
    """Where single-replica state that must outlive a restart is kept (usage, SQLite). Unset,
    and without Redis, usage is kept in memory only."""
    admin_token: SecretStr | None = None
    """Bearer token of the admin routes (`/admin/usage`; environment only). Unset: those
    routes answer 404."""
    quota_fail_open: bool = False
    """With Redis unreachable, serve tiers that have a quota (uncounted) instead of 503."""
    usage_retention_days: int = Field(400, ge=1)
    """How long usage minutes are kept in Redis (`aim:usage:*` expire after it)."""

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    def secret_bytes(self) -> bytes | None:
        """The server secret, from `secret` or `secret_file`; None when neither is set."""
        if self.secret is not None and self.secret.get_secret_value():
            return self.secret.get_secret_value().encode()
        if self.secret_file is not None:
            data = self.secret_file.read_bytes().strip()
            if not data:
                raise ValueError(f"secret_file {self.secret_file} is empty")
            return data
        return None
