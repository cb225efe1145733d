"""`JobsConfig`: the files + fine-tuning jobs service of `tunesmith serve` (the `jobs:` section),
and `JobsWorkerConfig`: `tunesmith jobs worker`, which runs the jobs of a store on its own.

The worker's settings (`WorkerSettings`) are shared: a server with `jobs.run_worker: true` (the
default) runs the same worker in its own process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from tunesmith.config import Flag, StrictModel

DEFAULT_LAUNCHER = "{python} -m tunesmith train {config}"


class _Strict(StrictModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class BaseModelEntry(_Strict):
    """A base model name clients may fine-tune, and the local base it stands for."""

    path: str = Field("default", description="the local base (must be the model this server serves)")
    learning_rate: Optional[float] = Field(
        None, gt=0, description="the learning rate a multiplier of 1 means; default: jobs.base_learning_rate")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


class ProjectSettings(_Strict):
    """A tenant: its API keys see only its own files, jobs and fine-tuned models."""

    api_keys: list[SecretStr] = Field(default_factory=list)
    max_queued_jobs: Optional[int] = Field(None, ge=1, description="default: jobs.max_queued_jobs_per_project")

    @field_validator("api_keys")
    @classmethod
    def _real_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for key in keys:
            value = key.get_secret_value()
            # `--print-config` shows secrets as asterisks; such a config must not become a key anyone can guess.
            if not value.strip() or set(value) == {"*"}:
                raise ValueError("an API key is empty or masked (asterisks from --print-config); give the real key")
        return keys


class WorkerSettings(_Strict):
    """How a jobs worker runs the jobs of a store: the server's own (`jobs.run_worker`) or
    `tunesmith jobs worker`. Several workers may share one store (on one host or on several that
    share its directory): each job is claimed by one worker at a time, under a lease."""

    root: Path = Field(Path("tunesmith-jobs"), description="file store, job runs and the SQLite databases")
    parallel_jobs: int = Field(1, ge=1, le=1024, description="jobs this worker trains at the same time")
    devices: list[str] = Field(
        default_factory=list, description="CUDA_VISIBLE_DEVICES value per job slot, e.g. ['0', '1']; "
                                          "empty: jobs see every device")
    launcher: str = Field(
        DEFAULT_LAUNCHER, description="command that trains one job; {python} {config} {run_dir} {job_id} are "
                                      "filled in, e.g. `torchrun --nproc_per_node 2 -m tunesmith train {config}`")
    memory: Optional[str] = Field(
        None, description="memory a job may use, e.g. 24GiB, for batch_size \"auto\"; default: the first GPU's "
                          "memory, or this machine's RAM without a GPU")
    cancel_grace_seconds: float = Field(5.0, ge=0.0, description="SIGTERM -> SIGKILL delay when stopping a job")
    poll_seconds: float = Field(0.5, gt=0.0, le=60.0)
    lease_seconds: float = Field(
        30.0, ge=1.0, le=3600.0, description="a job whose worker has not renewed its claim for this long (the "
                                             "worker died or lost the store) is resumed by another worker")
    register_models: bool = Field(True, description="record every succeeded job in the model registry")
    registry: Optional[Path] = Field(None, description="registry database; default: ROOT/registry.sqlite3")

    @field_validator("launcher")
    @classmethod
    def _launcher_names_config(cls, value: str) -> str:
        if "{config}" not in value:
            raise ValueError("the launcher must contain {config} (where the job's train config goes)")
        return value

    @property
    def registry_path(self) -> Path:
        return self.registry or self.root / "registry.sqlite3"

    @model_validator(mode="after")
    def _lease_outlives_polls(self):
        if self.lease_seconds < 4 * self.poll_seconds:
            raise ValueError(f"lease_seconds ({self.lease_seconds:g}) must be at least 4 x poll_seconds "
                             f"({self.poll_seconds:g}): a worker renews its leases once per poll")
        return self

    @field_validator("memory")
    @classmethod
    def _memory_size(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            from tunesmith.plan.devices import parse_memory

            parse_memory(value)  # refuses "24 gigs" with the planner's own message
        return value


class JobsConfig(WorkerSettings):
    """Files and fine-tuning jobs on `tunesmith serve`, as OpenAI's API offers them."""

    run_worker: bool = Field(
        True, description="run jobs in this server (in processes of their own); false: only serve the API and "
                          "the models, while `tunesmith jobs worker` on the same root runs the jobs")
    base_models: dict[str, BaseModelEntry] = Field(
        default_factory=dict,
        description="`model` names jobs may name -> local base, e.g. gpt-4o-mini-2024-07-18: default; the "
                    "served model's own name is always accepted")
    organization: str = Field("tunesmith", description="organization_id of jobs made with the server's own key")
    projects: dict[str, ProjectSettings] = Field(default_factory=dict, description="tenants and their API keys")
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1024, description="largest file a client may upload")
    max_queued_jobs_per_project: int = Field(20, ge=1)
    min_examples: int = Field(10, ge=1, description="fewest training examples a job accepts (OpenAI: 10)")
    base_learning_rate: float = Field(2e-4, gt=0, description="learning rate at learning_rate_multiplier 1")
    max_seq_len: int = Field(1024, ge=16)
    lora_r: int = Field(16, ge=1, le=1024)
    checkpoint_every: Optional[int] = Field(
        None, ge=1, description="steps between checkpoints; default: each epoch end, as OpenAI does")
    keep_checkpoints: int = Field(3, ge=1, description="the last N checkpoints stay servable (OpenAI keeps 3)")


class JobsWorkerConfig(WorkerSettings):
    """`tunesmith jobs worker`: run the jobs of a store without serving anything."""

    root: Annotated[Path, Flag("--store")] = Field(
        Path("tunesmith-jobs"), description="the jobs store to work on (the server's jobs.root)")
    parallel_jobs: Annotated[int, Flag("--parallel-jobs")] = Field(
        1, ge=1, le=1024, description="jobs this worker trains at the same time")
