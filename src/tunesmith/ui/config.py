"""`tunesmith ui`'s config: which workspace to show, which model server to talk to, where to listen."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import Field, SecretStr, field_validator

from tunesmith.config import Flag, StrictModel

# Reviews and votes live next to the runs they judge, in the workspace.
REVIEW_DB = Path(".tunesmith") / "reviews.sqlite"
WORKSPACE_ENV = "TUNESMITH_UI_WORKSPACE"
# The server's key variable (serve/state.py), read here too so that one setting guards both;
# importing it from there would load torch into the UI process.
API_KEY_ENV = "TUNESMITH_API_KEY"


class UiConfig(StrictModel):
    """`tunesmith ui`: runs, reports, a playground and blind A/B review in the browser."""

    workspace: Annotated[Path, Flag("--workspace", "-w")] = Field(Path("."), description="directory whose training runs, evaluations and datasets are shown")
    server: Annotated[Optional[str], Flag("--server")] = Field(
        None, description="URL of a `tunesmith serve` for the playground and reviews, e.g. http://127.0.0.1:8000")
    host: Annotated[str, Flag("--host")] = Field("127.0.0.1", description="address to bind; 0.0.0.0 exposes the UI to the network")
    port: Annotated[int, Flag("--port", "-p")] = Field(8100, ge=0, le=65535, description="0 picks a free port")
    api_key: Annotated[Optional[SecretStr], Flag("--api-key")] = Field(
        None, description="require `Authorization: Bearer KEY` on the UI's API (also read from TUNESMITH_API_KEY); "
                          "use the server's key, which the UI passes on to it")
    review_db: Annotated[Optional[Path], Flag("--review-db")] = Field(None, description=f"SQLite file of reviews and votes; default: WORKSPACE/{REVIEW_DB}")
    max_body_bytes: int = Field(1_048_576, ge=1024, le=1 << 30)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "warning"

    @field_validator("server")
    @classmethod
    def _http_url(cls, value: Optional[str]) -> Optional[str]:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"server must be an http:// or https:// URL, not {value!r}")
        # `tunesmith serve` announces its URL with /v1; the UI adds the API paths itself.
        return value.rstrip("/").removesuffix("/v1") if value else value
