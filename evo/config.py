"""A run's configuration: validated once, stored with the run as JSON, restored on resume.
Defaults may come from `[tool.evo]` in pyproject.toml; command-line flags win."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from evo.acceptance import COOLING_SCHEDULES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESETS = ("gpu", "cpu", "smoke")
# Seconds allowed beyond TIME_BUDGET: start-up (imports, data, torch.compile) and final evaluation.
DEFAULT_ALLOWANCES = {"gpu": (180.0, 120.0), "cpu": (60.0, 60.0), "smoke": (30.0, 30.0)}


class ConfigError(ValueError):
    """A setting the user must fix: one sentence."""


@dataclass
class RunConfig:
    name: str
    preset: str = "gpu"
    population: int = 8
    temperature: float | str = "auto"
    cooling: str = "exp"
    replicates: int = 3
    confirm: bool = True
    hours: float | None = None
    max_candidates: int | None = None
    operator: str = "llm"
    seed_train: str = "seed_train.py"
    seed_from: str | None = None        # REPO[@REF] of a greedy run, or evo:RUN[:NUMBER]
    program: str = "program.md"
    gpus: str | None = None
    slots: int | None = None
    startup_allowance: float | None = None
    eval_allowance: float | None = None
    lookahead: int = 1
    seed: int = 0
    models: list[str] = field(default_factory=list)
    max_cost: float | None = None
    prices: dict[str, list[float]] = field(default_factory=dict)  # USD per million tokens in/out, by model

    def validate(self) -> "RunConfig":
        if not self.name or "/" in self.name:
            raise ConfigError(f"run name {self.name!r} must be non-empty and contain no '/'.")
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}.")
        if self.population < 1:
            raise ConfigError(f"--population must be at least 1, not {self.population}.")
        if self.temperature != "auto":
            try:
                self.temperature = float(self.temperature)
            except (TypeError, ValueError):
                raise ConfigError(f"--temperature takes a number in val_bpb units or 'auto', not {self.temperature!r}.") from None
            if self.temperature < 0:
                raise ConfigError(f"--temperature must be >= 0, not {self.temperature}.")
        if self.cooling not in COOLING_SCHEDULES:
            raise ConfigError(f"--cooling must be one of {', '.join(COOLING_SCHEDULES)}, not {self.cooling!r}.")
        if self.replicates < 1:
            raise ConfigError(f"--replicates must be at least 1, not {self.replicates}.")
        if self.temperature == "auto" and self.replicates < 2:
            raise ConfigError("--temperature auto measures noise from the seed's replicates: use --replicates 2 or more, or give a number.")
        if self.hours is not None and self.hours <= 0:
            raise ConfigError(f"--hours must be positive, not {self.hours}.")
        if self.max_candidates is not None and self.max_candidates < 1:
            raise ConfigError(f"--max-candidates must be at least 1, not {self.max_candidates}.")
        if self.slots is not None and self.slots < 1:
            raise ConfigError(f"--slots must be at least 1, not {self.slots}.")
        for name in ("startup_allowance", "eval_allowance"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, not {value}.")
        if self.max_cost is not None and self.max_cost <= 0:
            raise ConfigError(f"--max-cost must be a positive number of dollars, not {self.max_cost}.")
        if self.lookahead < 0:
            raise ConfigError(f"--lookahead must be >= 0, not {self.lookahead}.")
        return self

    @property
    def allowances(self) -> tuple[float, float]:
        startup, evaluation = DEFAULT_ALLOWANCES[self.preset]
        return (self.startup_allowance if self.startup_allowance is not None else startup,
                self.eval_allowance if self.eval_allowance is not None else evaluation)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def pyproject_defaults(start: Path | None = None) -> dict:
    """The `[tool.evo]` table of the nearest pyproject.toml at or above `start` (cwd)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        path = folder / "pyproject.toml"
        if path.is_file():
            try:
                data = tomllib.loads(path.read_text())
            except (tomllib.TOMLDecodeError, OSError) as e:
                raise ConfigError(f"cannot read {path} ({e}).") from None
            table = data.get("tool", {}).get("evo", {})
            if not isinstance(table, dict):
                raise ConfigError(f"[tool.evo] in {path} must be a table.")
            return {k.replace("-", "_"): v for k, v in table.items()}
    return {}
