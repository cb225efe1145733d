"""The memory planner: `tunesmith plan CONFIG` (see docs/plan.md)."""

from tunesmith.plan.config import PlanConfig
from tunesmith.plan.run import PlanResult, check_fits, run

__all__ = ["PlanConfig", "PlanResult", "check_fits", "run"]
