"""A run's configuration: validated once, stored with the run as JSON, restored on resume.
Defaults may come from `[tool.evo]` in pyproject.toml; command-line flags win."""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from evo.core.acceptance import COOLING_SCHEDULES, auto_sigmas
from evo.core.selection import default_population

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Presets (data, budget, model size, allowances) are defined in prepare.py's PRESETS alone.
# Beyond these a setting is a typo, not a plan: a bigger population or more slots than this would
# only exhaust memory and threads before the first candidate runs.
MIN_SEED_REPLICATES = 3  # the seed's evaluations when --replicates is not given: max(this, slots)
UPPER_LIMITS = {"population": 10_000, "replicates": 100, "slots": 1_024, "lookahead": 1_024}
NO_BUDGET_POPULATION = 8  # a run bounded only by Ctrl-C or --max-cost: the large budget's population
MAX_NAME_BYTES = 200  # a run name is a folder name under archive/runs/ (255 bytes at most on common filesystems)


class ConfigError(ValueError):
    """A setting the user must fix: one sentence."""


@dataclass
class RunConfig:
    name: str
    preset: str = "gpu"
    population: int | None = None       # None: from the budget at the run's start (resolve_search)
    temperature: float | str = "auto"
    auto_sigmas: float | None = None    # `auto` is this many σ̂; None: from the budget at the run's start
    cooling: str = "hold"
    replicates: int | None = None       # None: max(3, slots) at the run's start (resolve_search)
    confirm: bool = True
    hours: float | None = None
    max_candidates: int | None = None
    operator: str = "llm"
    seed_train: str | None = "seed_train.py"   # None with --seed-from: the imported best is the seed
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
    model_settings: dict[str, dict] = field(default_factory=dict)  # [tool.evo.models]: settings by model (ModelSettings)
    sandbox: bool = True                # candidates in a bubblewrap sandbox where the platform allows
    early_stop: bool = True             # stop a child far above its parent's learning curve (evo.core.early_stop)
    locked: dict[str, str] = field(default_factory=dict)  # the apparatus the run started with (apparatus.locked_state)

    def validate(self) -> "RunConfig":
        check_run_name(self.name)
        if self.population is not None and self.population < 1:
            raise ConfigError(f"--population must be at least 1, not {self.population}.")
        if self.temperature != "auto":
            try:
                self.temperature = float(self.temperature)
            except (TypeError, ValueError):
                raise ConfigError(f"--temperature takes a number in val_bpb units or 'auto', not {self.temperature!r}.") from None
            _check_finite("temperature", self.temperature)
            if self.temperature < 0:
                raise ConfigError(f"--temperature must be >= 0, not {self.temperature}.")
        if self.cooling not in COOLING_SCHEDULES:
            raise ConfigError(f"--cooling must be one of {', '.join(COOLING_SCHEDULES)}, not {self.cooling!r}.")
        if self.replicates is not None and self.replicates < 1:
            raise ConfigError(f"--replicates must be at least 1, not {self.replicates}.")
        if self.temperature == "auto" and self.replicates is not None and self.replicates < 2:
            raise ConfigError("--temperature auto measures noise from the seed's replicates: use --replicates 2 or more, or give a number.")
        for name in ("hours", "max_cost", "startup_allowance", "eval_allowance"):
            _check_finite(name, getattr(self, name))
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
        for name, limit in UPPER_LIMITS.items():
            value = getattr(self, name)
            if value is not None and value > limit:
                raise ConfigError(f"--{name} must be at most {limit:,}, not {value:,}.")
        return self

    def allowances(self, defaults: tuple[float, float]) -> tuple[float, float]:
        """Seconds allowed beyond TIME_BUDGET (the runner holds each phase to its own): start-up,
        until the first timed step (imports, data, a cold torch.compile of model and optimizer steps,
        warm-up steps), and the final evaluation, from the end of training (on CUDA a second compile
        for the evaluation's graph). The flags, else the preset's `defaults` (prepare.py's PRESETS),
        sized for the slow case, since an overrun throws away the whole training: a cold compile on a
        shared host, and on `cpu` a busy 2-core box, where the 131k-token evaluation that takes
        10-15 s quiet took over 90 s. A candidate that really hangs costs only these seconds."""
        startup, evaluation = defaults
        return (self.startup_allowance if self.startup_allowance is not None else startup,
                self.eval_allowance if self.eval_allowance is not None else evaluation)

    def resolve_search(self, slots: int, seconds_per_evaluation: float) -> str:
        """Settle the population and the `auto` temperature's σ multiple the budget calls for (when
        not given) and say in one line what the search will do and why. `seconds_per_evaluation`: what one evaluation may take in a slot."""
        per_slot = evaluations_per_slot(self.hours, self.max_candidates, slots, seconds_per_evaluation)
        if self.population is not None:
            why = "as given"
        elif per_slot is None:
            self.population, why = NO_BUDGET_POPULATION, "no budget given"
        else:
            self.population = default_population(per_slot)
            budget = " and ".join(part for part in (f"{self.hours:g} h" if self.hours else "",
                                                    f"{self.max_candidates} candidates" if self.max_candidates else "")
                                  if part)
            why = f"≈ {per_slot:.0f} evaluations per slot in {budget}"
        replicates_why = ""
        if self.replicates is None:  # the seed phase fills every slot: idle GPUs measure nothing
            self.replicates = max(MIN_SEED_REPLICATES, slots)
            replicates_why = " (one per slot)" if self.replicates > MIN_SEED_REPLICATES else ""
        if self.auto_sigmas is None:
            self.auto_sigmas = round(auto_sigmas(None if per_slot is None else per_slot * slots), 2)
        temperature = f"auto ({self.auto_sigmas:g}σ̂)" if self.temperature == "auto" else f"{self.temperature:g}"
        cooling = "hold-then-cool" if self.cooling == "hold" else f"{self.cooling} cooling"
        return (f"search: population {self.population} ({why}), temperature {temperature}, {cooling}, "
                f"{self.replicates} replicate{'s' if self.replicates != 1 else ''}{replicates_why}, confirm {'on' if self.confirm else 'off'}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def evaluations_per_slot(hours: float | None, max_candidates: int | None, slots: int,
                         seconds_per_evaluation: float) -> float | None:
    """How many evaluations each slot gets: the tighter of the candidate and the time budget; None
    with neither."""
    counts = []
    if max_candidates:
        counts.append(max_candidates / max(slots, 1))
    if hours:
        counts.append(hours * 3600.0 / max(seconds_per_evaluation, 1.0))
    return min(counts) if counts else None


def check_run_name(name: str) -> None:
    """A run name becomes a folder under archive/runs/ and appears in every log line: it must stay
    one printable line that names a folder inside runs/, never a path that leaves it."""
    if (not name or name != name.strip() or not name.isprintable() or "/" in name or "\\" in name
            or set(name) == {"."} or len(name.encode("utf-8")) > MAX_NAME_BYTES):
        raise ConfigError(f"run name {name!r} must be 1 to {MAX_NAME_BYTES} printable characters without '/', "
                          "'\\', line breaks or surrounding spaces, and not '.' or '..'; e.g. --name night-1.")


def _check_finite(name: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, not {value}.")


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
