"""The `evo` command line (typer + rich). Commands are thin: they parse, call the archive or the
engine, and print. Bad input gets one sentence on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import shutil
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from rich.cells import cell_len
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table

from evo import __version__
from evo.storage import (ACTIVE, COMPLETE, DEFAULT_STORAGE, FAIL, INTERRUPTED, REPORTING_REPLICATE, STALE_AFTER_SECONDS,
                         Archive, ArchiveError, Candidate, OwnershipLost, Run, busy_share, liveness, owner_id, owner_pid_here,
                         queries)
from evo.config import ConfigError, RunConfig, pyproject_defaults
from evo.core.format import candidate_bpb, short_bpb
from evo.core import acceptance, noise
from evo.core.counts import ACCEPTED, HISTORY, candidate_outcome, word
from evo.core.lineage import first_parents
from evo.cli.view import UNRESPONSIVE, run_status
from evo.core import format as fmt


class _Commands(typer.core.TyperGroup):
    """Every command: an archive failure met anywhere (a damaged page read halfway through a
    listing, a full disk) ends in its one sentence and exit status, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ArchiveError as e:
            raise fail(str(e), e.code)


app = typer.Typer(
    cls=_Commands,
    name="evo",
    help="Overnight evolutionary search over LLM training scripts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

Storage = Annotated[str, typer.Option("--storage", envvar="EVO_STORAGE", help="SQLAlchemy URL of the archive.")]
RunName = Annotated[Optional[str], typer.Option("--name", "-n", help="Run name (default: the newest run that is running or ended).")]


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"evo: error: {message}", err=True)
    return typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"evo {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """Overnight evolutionary search over LLM training scripts."""
    try:
        defaults = pyproject_defaults()
    except ConfigError as e:
        raise fail(str(e))
    prices = defaults.pop("prices", {})
    if not isinstance(prices, dict):
        raise fail("[tool.evo.prices] in pyproject.toml must be a table of model = [input, output] USD per million tokens.")
    models = defaults.pop("models", None)
    if models is not None:  # checked here so that a typo stops every command, as a bad [tool.evo] key does
        from evo.operators import OperatorError
        from evo.operators.llm.client import parse_model_settings
        try:
            parse_model_settings(models)
        except OperatorError as e:
            raise fail(str(e))
    ctx.obj = {"prices": prices, "model_settings": models or {}}
    if defaults:
        known = {p.name for p in run_command_params()}
        unknown = sorted(set(defaults) - known)
        if unknown:
            raise fail(f"[tool.evo] in pyproject.toml has unknown setting(s) {', '.join(unknown)}.")
        ctx.default_map = {"run": defaults}


def open_archive(storage: str, writer: bool = False) -> Archive:
    try:
        return Archive(storage, writer=writer)
    except ArchiveError as e:
        raise fail(str(e), e.code)


def open_run(storage: str, name: str | None, *which: str) -> tuple[Archive, Run, list[Candidate]]:
    """The archive (read-only), the run, and the candidates named by `which` (numbers or 'best')."""
    archive = open_archive(storage)
    try:
        run_row = archive.find_run(name)
        return archive, run_row, [_resolve(archive, run_row.id, w) for w in which]
    except ArchiveError as e:
        raise fail(str(e), e.code)


# ---------------------------------------------------------------------------
# evo run
# ---------------------------------------------------------------------------

@app.command()
def run(
    ctx: typer.Context,
    name: Annotated[Optional[str], typer.Option("--name", "-n", help="Run name (default: run-YYYYmmdd-HHMMSS).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the named run exactly where it stopped.")] = False,
    population: Annotated[Optional[int], typer.Option(help=(
        "Population size N (default: from the budget, 2 at 100 or fewer evaluations per slot, 8 at 400 or more)."))] = None,
    temperature: Annotated[str, typer.Option(help=(
        "Initial temperature in val_bpb units, or 'auto': k σ̂, k from 2 (100 evaluations or fewer) "
        "to 3 (400 or more)."))] = "auto",
    cooling: Annotated[str, typer.Option(help=(
        "Cooling schedule over the budget: hold (T0 until 60 % of it, then exponential), exp, linear or none."))] = "hold",
    replicates: Annotated[Optional[int], typer.Option(help="Evaluations of the seed, to measure noise σ [default: max(3, slots)].")] = None,
    confirm: Annotated[bool, typer.Option(help="Re-evaluate a would-be new best and judge it on its mean.")] = True,
    hours: Annotated[Optional[float], typer.Option(help="Wall-clock budget of the run.")] = None,
    max_candidates: Annotated[Optional[int], typer.Option(help=(
        "Budget in candidates (after the seed). At its end the top 3 members are measured once more and the best "
        "of them 3 times more: extra evaluations, not candidates (none with --replicates 1 --no-confirm)."))] = None,
    operator: Annotated[str, typer.Option(help="How children are made: llm (mutation and crossover by an LLM) or tweak (offline hyperparameter perturbation).")] = "llm",
    model: Annotated[Optional[list[str]], typer.Option(
        help="LLM as provider:model[@base_url], repeatable (default anthropic:claude-sonnet-4-5).")] = None,
    max_cost: Annotated[Optional[float], typer.Option(help="Stop proposing once LLM spend reaches this many dollars.")] = None,
    preset: Annotated[Optional[str], typer.Option(envvar="EVO_PRESET", help="gpu, cpu or smoke.")] = "gpu",
    seed_train: Annotated[Path, typer.Option(help="The population's starting train.py.")] = Path("seed_train.py"),
    seed_from: Annotated[Optional[str], typer.Option(
        help="Start from a greedy autoresearch run's best commit (REPO[@REF]) or another evo run (evo:RUN[:N]).")] = None,
    program: Annotated[Path, typer.Option(help="Research instructions for LLM operators.")] = Path("program.md"),
    gpus: Annotated[Optional[str], typer.Option(help="GPUs to use, e.g. 0,1,2 (default: all visible).")] = None,
    slots: Annotated[Optional[int], typer.Option(help="Parallel slots on a CPU machine (default 1).")] = None,
    startup_allowance: Annotated[Optional[float], typer.Option(help="Seconds for start-up and compilation beyond the budget.")] = None,
    eval_allowance: Annotated[Optional[float], typer.Option(help="Seconds for the final evaluation beyond the budget.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the search's own random choices.")] = 0,
    sandbox: Annotated[bool, typer.Option("--sandbox/--no-sandbox", help=(
        "Train and score candidates in a bubblewrap sandbox: no network, no view of the archive, the "
        "validation data or evo's processes (Linux; without bubblewrap evo warns and runs unsandboxed)."))] = True,
    early_stop: Annotated[bool, typer.Option("--early-stop/--no-early-stop", help=(
        "Stop a child at 25 % or 45 % of its budget when its train loss is far above its parent's at the "
        "same elapsed time (a threshold learned from the run's completed children); the slot takes the next."))] = True,
    prepare: Annotated[Path, typer.Option(help="The locked prepare.py.")] = Path("prepare.py"),
    storage: Storage = DEFAULT_STORAGE,
) -> None:
    """Evolve train.py: evaluate the seed, then propose, train, score and select until the budget ends."""
    from evo.launch import apparatus
    from evo.engine.loop import Engine, EngineError
    from evo.engine.seeding import SeedError, summarize_plan
    from evo import operators
    from evo.operators import OperatorError
    from evo.launch.runner import detect_slots, device_description, run_evaluation
    from evo.cli.view import RunView

    archive = open_archive(storage, writer=True)
    given = {p: _given(ctx, p) for p in ctx.params}
    try:
        if resume:
            if not name:
                raise ConfigError("--resume needs the --name of the run to continue.")
            run_row = archive.find_run(name)
            stored = json.loads(run_row.config)
            config = RunConfig.from_dict(stored)
            for key in ("hours", "max_candidates", "max_cost", "gpus", "slots",  # budgets and hardware may change
                        "startup_allowance", "eval_allowance", "sandbox", "early_stop"):
                if given.get(key):
                    setattr(config, key, ctx.params[key])
            config.validate()
            changed = {k: v for k, v in config.to_dict().items() if stored.get(k) != v}
        else:
            config = RunConfig(name=name or datetime.now().strftime("run-%Y%m%d-%H%M%S"), preset=preset or "gpu",
                               population=population, temperature=temperature, cooling=cooling,
                               replicates=replicates, confirm=confirm, hours=hours, max_candidates=max_candidates,
                               operator=operator, seed_from=seed_from,
                               # with --seed-from, only an explicit --seed-train replaces the imported best
                               seed_train=str(seed_train) if given["seed_train"] or not seed_from else None,
                               program=str(program), gpus=gpus,
                               slots=slots, startup_allowance=startup_allowance, eval_allowance=eval_allowance,
                               seed=seed, models=model or [], max_cost=max_cost, sandbox=sandbox,
                               early_stop=early_stop,
                               prices=(ctx.obj or {}).get("prices", {}),
                               model_settings=(ctx.obj or {}).get("model_settings", {})).validate()
        operators.check(config)
        # A resumed run already has its seed (unless it died before archiving it).
        plan = None if resume and run_row.seed_id is not None else _seed_plan(config, archive, prepare)
        slot_list = detect_slots(config.gpus, config.slots)
        app_ = apparatus.load(prepare, config.preset)
        if not resume:
            run_row = archive.create_run(config.name, config.to_dict())
        # From the claim on, `evo stop` may signal this process: what arrives before the engine runs
        # is kept and acted on once it does.
        early: list[int] = []
        previous = {s: signal.signal(s, lambda signum, _frame: early.append(signum)) for s in (signal.SIGUSR1, signal.SIGTERM)}
        archive.claim_run(run_row.id, owner_id(), stale_after=STALE_AFTER_SECONDS)
        if resume and changed:  # stored, so that a later plain --resume keeps them
            archive.update_run(run_row.id, "resumed with " + ", ".join(f"{k} {v}" for k, v in changed.items()),
                               config=json.dumps(config.to_dict(), sort_keys=True))
    except (ArchiveError, ConfigError, OperatorError, apparatus.ApparatusError, SeedError, ValueError) as e:
        raise fail(str(e), getattr(e, "code", 2))

    view = RunView(config.name)
    archive.listener = view.on_event
    view.line(f"{'resuming' if resume else 'starting'} run {config.name!r}: preset {config.preset}, population "
              f"{config.population or 'from the budget'}, temperature {config.temperature} ({config.cooling}), "
              f"operator {config.operator}, "
              f"{len(slot_list)} slot(s): {', '.join(s.name for s in slot_list)}")
    try:
        apparatus.ensure_prepared(app_, view.line)
    except apparatus.ApparatusError as e:
        raise _give_up(archive, run_row, resume, str(e))
    except KeyboardInterrupt:
        raise _give_up(archive, run_row, resume, f"interrupted while preparing preset {config.preset!r}.", 130)
    locked = apparatus.locked_state(app_)
    mismatch = apparatus.locked_mismatch(config.locked, locked, config.name, config.preset)
    if mismatch:
        raise _give_up(archive, run_row, resume, mismatch)
    if config.locked != locked:  # a new run, or one archived before evo stored it
        config.locked = locked
        archive.update_run(run_row.id, config=json.dumps(config.to_dict(), sort_keys=True))

    if plan is not None and config.seed_from:
        for line in summarize_plan(plan).splitlines():
            view.line(line)
    facts = {"preset": config.preset, "device": device_description(slot_list), "slots": str(len(slot_list)),
             "TIME_BUDGET": f"{app_.time_budget:.0f} s of training per candidate"}
    try:
        op = operators.build(config, archive, run_row.id, facts)
    except OperatorError as e:
        raise _give_up(archive, run_row, resume, str(e))
    engine = Engine(archive, run_row, config, op, slot_list, app_, plan,
                    evaluate=functools.partial(run_evaluation, confine=_confinement(config, archive, app_, view.line)))
    view.slots = engine.status
    view.header = lambda: _header(archive, run_row.id, config.name, engine.time_spent())
    presses = {"n": 0, "first": 0}

    def on_signal(signum, _frame):
        presses["n"] += 1
        if signum == signal.SIGUSR1:  # `evo stop`: the first Ctrl-C from elsewhere, however often it is sent
            presses["first"] = presses["first"] or signal.SIGINT
            if not engine.stop_proposing.is_set():
                view.line("stopping (evo stop): no new candidates; running evaluations will finish")
                engine.request_stop()
            return
        presses["first"] = presses["first"] or signum
        if signum == signal.SIGINT and not engine.stop_proposing.is_set():
            view.line("stopping: no new candidates; running evaluations will finish (Ctrl-C again kills them)")
            engine.request_stop()
        else:
            view.line("killing running evaluations; they will be queued again on --resume")
            engine.request_kill()

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        previous.setdefault(s, signal.signal(s, on_signal))  # the early catchers' originals are kept
    for signum in early:
        on_signal(signum, None)
    try:
        with view:
            status = engine.execute()
    except ArchiveError as e:  # the database failed (a full disk), or another process took the run over
        if not isinstance(e, OwnershipLost):
            try:  # leave the run resumable, not ACTIVE with a dead owner, if the database still takes a write
                archive.update_run(run_row.id, status=INTERRUPTED, owner=None)
            except ArchiveError:
                pass  # a --resume here takes over from the dead owner at once
        raise fail(str(e), e.code)
    except EngineError as e:
        archive.update_run(run_row.id, owner=None)
        raise fail(str(e))
    finally:
        for s, handler in previous.items():
            # After a stop by signal, another press while the process exits must not kill it mid-way
            # (Python restores SIG_DFL at exit, and a -2 status reads as a crash); SIG_IGN survives.
            signal.signal(s, signal.SIG_IGN if presses["n"] else handler)
    if status == INTERRUPTED:
        view.line(f"run stopped; resume it with `evo run --resume --name {config.name}`; `evo status --name "
                  f"{config.name}` shows where it stands")
        raise typer.Exit(128 + (presses["first"] or signal.SIGINT))  # the shell's convention: ended by a signal
    view.line(f"run {status.lower()}; `evo status --name {config.name}` and `evo best --name {config.name}` show the result")


def _confinement(config: RunConfig, archive: Archive, app_, say: Callable[[str], None]):
    """The sandbox candidates run in, or None (--no-sandbox, or a platform without one: said once)."""
    from evo.launch import sandbox
    from evo.launch.runner import Confinement

    if not config.sandbox:
        return None
    reason = sandbox.probe()
    if reason:
        say(sandbox.UNSANDBOXED_WARNING.format(reason=reason))
        return None
    return Confinement(archive.files, app_.manifest)


def _give_up(archive: Archive, run_row: Run, resume: bool, message: str, code: int = 2) -> typer.Exit:
    """A start that failed leaves nothing behind: a new run that archived no candidate is deleted, so
    its name can start again with other settings; any other run is released for `--resume`."""
    if resume or not archive.delete_run(run_row.id):
        archive.update_run(run_row.id, owner=None)
    return fail(message, code)


def _seed_plan(config: RunConfig, archive: Archive, prepare: Path = Path("prepare.py")):
    """The seed of a new run: a greedy run's best commit or another evo run's candidate (with their
    history), else the --seed-train file; both: that history with the file as the seed."""
    from evo.engine.seeding import SeedPlan, with_seed_file
    from evo.gitio.greedy import seed_from

    if config.seed_from:
        plan = seed_from(config.seed_from, archive)
        if config.seed_train is None:
            return plan
        return with_seed_file(plan, _seed_code(config, prepare), config.seed_train)
    return SeedPlan(_seed_code(config, prepare))


def _seed_code(config: RunConfig, prepare: Path) -> str:
    path = config.seed_train
    try:
        code = Path(path).read_text()
        compile(code, path, "exec")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the seed file {path} ({getattr(e, 'strerror', None) or e}).")
    except SyntaxError as e:
        raise ConfigError(f"the seed file {path} is not valid Python ({e.msg}, line {e.lineno}).")
    from evo.launch import apparatus

    # seed_train.py gets the preset's model and batch size as plain numbers
    return apparatus.seed_for(prepare, config.preset, code, path)


def _header(archive: Archive, run_id: int, name: str, time_spent: dict[str, float]) -> str:
    run_row = archive.run_by_id(run_id)
    best = archive.best(run_id)
    best_text = f"best #{best.number} {fmt.bpb(best.val_bpb)}" if best else "best: none yet"
    return (f"evo run {name}: {archive.tally(run_id).children_line(inline=True)}, {best_text}, "
            f"{fmt.busy(busy_share(archive.trained_seconds(run_id), time_spent['slot_seconds']))}\n"
            + _budget(archive, run_row, json.loads(run_row.config), time_spent["active_seconds"]))


def _budget(archive: Archive, run_row: Run, config: dict, active_seconds: float | None = None,
            live: bool = True) -> str:
    """The budget line of `evo status` and the live header."""
    active = run_row.active_seconds if active_seconds is None else active_seconds
    return fmt.budget(archive.count_children(run_row.id), config.get("max_candidates"), active, config.get("hours"),
                      archive.cost(run_row.id), config.get("max_cost"), live=live)


def _given(ctx: typer.Context, param: str) -> bool:
    """Whether the user set `param` (flag or environment variable) rather than leaving a default.
    Compared by name: typer ships its own click, whose ParameterSource is not click's."""
    source = ctx.get_parameter_source(param)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT")


def run_command_params() -> list:
    return typer.main.get_command(app).commands["run"].params  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# Reading the archive
# ---------------------------------------------------------------------------

RICH_ROWS = 1000  # above this a table is printed as plain lines: rich lays out every row before the first shows


def _print_table(headers: tuple[str, ...], rows: list[tuple[str, ...]], wrap_last: bool = False) -> None:
    """A rich table on a terminal wide enough for it, else plain aligned columns, one row a line,
    that survive a pipe, a file and grep. Only the last column may wrap (with `wrap_last`): a run
    name or number is never cut. Cell text is shown as is, never read as markup."""
    console = Console()
    widths = [max(cell_len(cell) for cell in column) for column in zip(headers, *rows)]
    fixed = widths[:-1] if wrap_last else widths
    # each column adds a border and a space either side; a wrapping column needs room for a few words
    if console.is_terminal and len(rows) <= RICH_ROWS and sum(fixed) + 3 * len(headers) + 1 + (20 if wrap_last else 0) <= console.width:
        table = Table()
        for i, header in enumerate(headers):
            wraps = wrap_last and i == len(headers) - 1
            table.add_column(header, no_wrap=not wraps, overflow="fold", min_width=None if wraps else widths[i])
        for row in rows:
            table.add_row(*(escape(cell) for cell in row))
        console.print(table)
        return
    out = sys.stdout
    for row in (headers, *rows):
        cells = [" ".join(cell.split()) for cell in row]
        out.write("  ".join(cell + " " * (w - cell_len(cell)) for cell, w in zip(cells, widths)).rstrip() + "\n")
    out.flush()


def _resolve(archive: Archive, run_id: int, which: str) -> Candidate:
    if which == "best":
        best = archive.best(run_id)
        if best is None:
            raise ArchiveError("the run has no evaluated, accepted candidate yet.")
        return best
    try:
        number = int(which)
    except ValueError:
        raise ArchiveError(f"{which!r} is not a candidate number or 'best'.") from None
    return archive.candidate(run_id, number)


def _diff(a_code: str, b_code: str, a_name: str, b_name: str) -> str:
    """The report's diff engine, so `evo diff`, `evo show` and the report show the same hunks
    (imported here: the report package is not loaded for other commands)."""
    from evo.core.diff import unified_diff
    return unified_diff(a_code, b_code, a_name, b_name)


def _print_diff(text: str) -> None:
    console = Console()
    if not text:
        console.print("(no change)")
    elif console.is_terminal:
        console.print(Syntax(text, "diff", theme="ansi_dark"))
    else:
        sys.stdout.write(text)


@app.command()
def status(name: RunName = None, storage: Storage = DEFAULT_STORAGE) -> None:
    """How a run is going; safe to call from another terminal while it runs."""
    archive, r, _ = open_run(storage, name)
    counts = archive.tally(r.id)
    config = json.loads(r.config)
    best = archive.best(r.id)
    label, detail = run_status(r, *liveness(r))
    lines = [
        f"run {r.name}: {label}" + (f" ({detail})" if detail else ""),
        f"preset {config['preset']}, population {counts.members}/{config['population']}, temperature "
        f"{config['temperature']} ({config['cooling']}), operator {config['operator']}",
        f"noise σ {fmt.bpb(r.sigma)}, T0 {fmt.bpb(r.temperature0)}" if r.sigma is not None and r.temperature0 is not None else "noise σ: not measured yet",
        counts.line(),
        f"active {r.active_seconds / 3600:.2f} h, {fmt.busy(busy_share(archive.trained_seconds(r.id), r.slot_seconds))}, "
        f"LLM spend ${archive.cost(r.id):.2f}",
        _budget(archive, r, config, live=label == ACTIVE),
        f"best: #{best.number} val_bpb {candidate_bpb(best, r.sigma)}  {best.hypothesis}" if best else "best: none yet",
    ]
    typer.echo("\n".join(lines))
    events = archive.events(r.id, limit=5)
    if events:
        typer.echo("recent:")
        for ev in events:
            typer.echo(f"  {ev.at:%H:%M:%S} {ev.kind}: {ev.message}")


@app.command("list")
def list_runs(storage: Storage = DEFAULT_STORAGE) -> None:
    """Every run in the archive."""
    archive = open_archive(storage)
    rows = []
    for r in archive.runs():
        best = archive.best(r.id)
        label, _ = run_status(r, *liveness(r))
        counts = archive.tally(r.id)
        rows.append((r.name, label, str(counts.total), str(counts.n_children), str(counts[ACCEPTED]),
                     short_bpb(best) if best else "-", f"{r.created_at:%Y-%m-%d %H:%M}"))
    _print_table(("run", "status", "candidates", "children", "accepted", "best val_bpb", "created"), rows)


@app.command()
def stop(name: RunName = None,
         now: Annotated[bool, typer.Option("--now", help="Kill the running evaluations too (queued again on --resume).")] = False,
         storage: Storage = DEFAULT_STORAGE) -> None:
    """Stop a running run from another terminal, as Ctrl-C in its own does: no new candidates, the
    running evaluations finish (--now: they are killed, like a second Ctrl-C)."""
    archive, r, _ = open_run(storage, name)
    label, _ = run_status(r, *liveness(r))
    if label not in (ACTIVE, UNRESPONSIVE):
        raise fail(f"run {r.name!r} is not running ({label}); nothing to stop.")
    pid = owner_pid_here(r.owner)
    if pid is None:
        raise fail(f"run {r.name!r} runs on {r.owner.partition(':')[0]}, not on this machine; run `evo stop --name "
                   f"{r.name}` there, or press Ctrl-C in its terminal.")
    try:
        os.kill(pid, signal.SIGTERM if now else signal.SIGUSR1)
    except ProcessLookupError:
        raise fail(f"run {r.name!r} ended just now; nothing to stop.")
    except PermissionError:
        raise fail(f"run {r.name!r} belongs to another user's process {pid}; ask them, or stop it as that user.")
    if now:
        typer.echo(f"asked run {r.name!r} (process {pid}) to stop now: its running evaluations are killed and "
                   f"queued again; resume it with `evo run --resume --name {r.name}`.")
    else:
        typer.echo(f"asked run {r.name!r} (process {pid}) to stop: no new candidates, the running evaluations "
                   f"finish; `evo stop --now --name {r.name}` kills them instead.")


@app.command()
def delete(name: Annotated[str, typer.Option("--name", "-n", help="The run to delete (always named: no default).")],
           yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")] = False,
           storage: Storage = DEFAULT_STORAGE) -> None:
    """Delete a run and everything it archived: candidates, evaluations, LLM calls, its files."""
    open_archive(storage).close()  # a mistyped --storage is refused, not made a new empty archive
    archive = open_archive(storage, writer=True)
    try:
        r = archive.find_run(name)
    except ArchiveError as e:
        raise fail(str(e), e.code)
    label, _ = run_status(r, *liveness(r))
    if label in (ACTIVE, UNRESPONSIVE):
        raise fail(f"run {r.name!r} is running ({r.owner}); stop it first with `evo stop --name {r.name}`.")
    what = f"run {r.name!r}: {archive.tally(r.id).total} candidates, {archive.count_evaluations(r.id)} completed evaluations"
    if not yes:
        if not sys.stdin.isatty():
            raise fail(f"deleting {what} needs a confirmation; pass --yes to delete without one.")
        if not typer.confirm(f"delete {what}, for good?"):
            raise fail("nothing deleted.", 1)
    try:
        archive.remove_run(r.id)
    except ArchiveError as e:
        raise fail(str(e), e.code)
    shutil.rmtree(archive.files / "runs" / r.name, ignore_errors=True)
    typer.echo(f"deleted {what}.")


@app.command()
def candidates(
    name: RunName = None,
    output_format: Annotated[str, typer.Option("--format", "-f", help="table, json, or tsv (autoresearch's results.tsv).")] = "table",
    repo: Annotated[Path, typer.Option(help="With -f tsv: the repository `evo export --lineage` wrote the run to; its commits fill the commit column.")] = Path("."),
    storage: Storage = DEFAULT_STORAGE,
) -> None:
    """Every candidate of a run."""
    if output_format not in ("table", "json", "tsv"):
        raise fail(f"--format must be table, json or tsv, not {output_format!r}.")
    archive, r, _ = open_run(storage, name)
    cands = archive.candidates(r.id)
    numbers = {c.id: c.number for c in cands}
    if output_format == "json":
        typer.echo(json.dumps(queries.candidate_records(archive, r.id, cands), indent=1))
    elif output_format == "tsv":
        from evo.gitio.export import exported_commits
        typer.echo(results_tsv(archive, r.id, cands, exported_commits(repo, r.name)), nl=False)
    else:
        rows = []
        for c in cands:
            parents = ",".join(str(numbers[p]) for p in (c.parent_id, c.parent2_id) if p is not None) or "-"
            state = c.state + (f"({c.fail_reason})" if c.fail_reason else "")
            acc = "-" if c.accepted is None else ("yes" if c.accepted else "no") + (
                f" p={c.accept_probability:.2f}" if c.accept_probability is not None and c.number else "")
            rows.append((str(c.number), parents, c.operator, state, short_bpb(c), acc, c.hypothesis))
        _print_table(("#", "parent", "operator", "state", "val_bpb", "accepted", "hypothesis"), rows, wrap_last=True)


def results_tsv(archive: Archive, run_id: int, cands: list[Candidate], commits: dict[int, str] | None = None) -> str:
    """autoresearch's results.tsv: commit, val_bpb, memory_gb, status (keep/discard/crash), description.
    The commit is the candidate's exported git commit (`commits`: number -> sha) where it has one,
    else the first 7 characters of its code hash (rejected candidates are never committed)."""
    peak = {}
    for ev in archive.evaluations(run_id):
        if ev.peak_vram_mb is not None:
            peak[ev.candidate_id] = max(peak.get(ev.candidate_id, 0.0), ev.peak_vram_mb)
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerow(["commit", "val_bpb", "memory_gb", "status", "description"])
    for c in cands:
        if c.state == FAIL:
            status_, bpb = "crash", 0.0
        elif c.state == COMPLETE:
            status_ = "keep" if c.accepted else "discard"
            bpb = c.val_bpb if c.val_bpb is not None else c.imported_val_bpb or 0.0
        else:
            continue
        description = (c.hypothesis or c.operator).replace("\t", " ").replace("\n", " ")
        commit = (commits or {}).get(c.number)
        writer.writerow([commit[:7] if commit else c.code_hash[:7], f"{fmt.bpb(bpb)}", f"{peak.get(c.id, 0.0) / 1024:.1f}", status_, description])
    return out.getvalue()


@app.command()
def show(
    number: Annotated[str, typer.Argument(help="Candidate number, or 'best'.")],
    name: RunName = None,
    storage: Storage = DEFAULT_STORAGE,
) -> None:
    """One candidate: metrics, hypothesis, acceptance, diff against its parent, log tail."""
    archive, r, (c,) = open_run(storage, name, number)
    parent = archive.candidate_by_id(c.parent_id) if c.parent_id else None
    parent2 = archive.candidate_by_id(c.parent2_id) if c.parent2_id else None
    typer.echo(f"candidate {c.number} of run {r.name}: {c.operator}"
               + (f" from #{parent.number}" if parent else "") + (f" and #{parent2.number}" if parent2 else ""))
    typer.echo(f"hypothesis: {c.hypothesis}")
    if c.rationale:
        typer.echo(f"rationale: {c.rationale}")
    role, outcome = candidate_outcome(c, r.seed_id)
    typer.echo(f"state: {c.state}" + (f" ({c.fail_reason}: {c.fail_detail})" if c.fail_reason else "")
               + f"; {word(outcome, role)} {'(imported history)' if role == HISTORY else role}")
    evals = archive.evaluations(r.id, c.id)
    if acceptance.ignores_seed([ev.val_bpb for ev in evals if ev.state == COMPLETE]):
        typer.echo(f"val_bpb: {fmt.bpb(c.val_bpb, r.sigma)} (n={c.n_evals}; the run's σ: its own spread is not trusted)")
        typer.echo("warning: its evaluations with different EVO_SEEDs scored exactly alike: it ignores EVO_SEED, "
                   "so its replicates measure nothing about noise")
    else:
        typer.echo(f"val_bpb: {candidate_bpb(c, r.sigma)}")
    if parent and parent.val_bpb is not None and c.val_bpb is not None:
        typer.echo(f"Δ vs parent #{parent.number}: {fmt.delta(c.val_bpb - parent.val_bpb)}"
                   + (f" (σ {fmt.bpb(r.sigma)})" if r.sigma is not None else ""))
    if c.accepted is not None:
        verdict = "accepted" if c.accepted else "rejected"
        extra = ""
        if c.accept_temperature is not None and c.accept_probability is not None:
            extra = f" at T {fmt.bpb(c.accept_temperature)} with probability {c.accept_probability:.3f}"
        typer.echo(f"decision: {verdict}{extra}" + (" (in population)" if c.in_population else ""))
    calls = archive.calls_of(c.id)
    if c.model or calls:
        typer.echo(f"model: {c.model or '-'}, {len(calls)} LLM call(s), tokens {sum(x.tokens_in for x in calls)} in / "
                   f"{sum(x.tokens_out for x in calls)} out, cost ${sum(x.cost_usd for x in calls):.4f}")
    for ev in evals:
        speed = noise.tokens_per_second(ev)
        metrics = (f"val_bpb {fmt.bpb(ev.val_bpb)}, {ev.num_steps} steps" + (f" at {speed:,.0f} tok/s" if speed else "")
                   + f", {ev.training_seconds:.1f}s training, peak {ev.peak_vram_mb:.0f} MB, mfu {ev.mfu_percent:.1f}%"
                   + (f", load {ev.load_avg:.1f}" if ev.load_avg is not None else "")) if ev.state == COMPLETE else \
            f"{ev.fail_reason}: {ev.detail}" if ev.state == FAIL else ""
        typer.echo(f"  evaluation {ev.replicate} (seed {ev.seed}, slot {ev.slot}): {ev.state} {metrics}")
    for warning in noise.warnings(evals, os.cpu_count() or 1):
        typer.echo(f"warning: {warning}")
    if parent:
        typer.echo("")
        stored = archive.stored_diff(c.id)
        _print_diff(stored if stored is not None else
                    _diff(archive.code(parent.code_hash), archive.code(c.code_hash), f"#{parent.number}", f"#{c.number}"))
    last = next((ev for ev in reversed(evals) if ev.log_tail), None)
    if last:
        typer.echo(f"\nlog tail (evaluation {last.replicate}):")
        typer.echo("\n".join(last.log_tail.splitlines()[-30:]))


@app.command()
def diff(
    a: Annotated[str, typer.Argument(help="Candidate number or 'best'.")],
    b: Annotated[str, typer.Argument(help="Candidate number or 'best'.")],
    name: RunName = None,
    storage: Storage = DEFAULT_STORAGE,
) -> None:
    """Unified diff between two candidates' code."""
    archive, _, (ca, cb) = open_run(storage, name, a, b)
    _print_diff(_diff(archive.code(ca.code_hash), archive.code(cb.code_hash), f"#{ca.number}", f"#{cb.number}"))


@app.command()
def best(name: RunName = None, storage: Storage = DEFAULT_STORAGE) -> None:
    """The best candidate found, with the path of changes that led to it."""
    archive, r, (c,) = open_run(storage, name, "best")
    typer.echo(f"best of run {r.name}: candidate {c.number}, val_bpb {candidate_bpb(c, r.sigma)}")
    seed = archive.candidate_by_id(r.seed_id) if r.seed_id is not None else None
    later = [e.val_bpb for e in archive.evaluations(r.id, c.id)
             if e.state == COMPLETE and e.replicate >= REPORTING_REPLICATE]
    typer.echo(judged_line(c, later, seed, r.sigma))
    typer.echo(f"hypothesis: {c.hypothesis}")
    typer.echo("path from the seed:")
    for node in reversed(first_parents(c, archive.candidate_by_id)):
        typer.echo(f"  #{node.number:<5} {short_bpb(node)}  {node.operator:<9} {node.hypothesis}")


def judged_line(c: Candidate, later: list[float], seed: Candidate | None, sigma: float | None) -> str:
    """What the best is judged by (its reporting evaluations where it has them: made after the run
    chose it, so no choice looked at them) and P(better than the seed) on the run's σ̂."""
    mean, n = (c.val_bpb_post, len(later)) if c.val_bpb_post is not None and later else (c.val_bpb, c.n_evals)
    what = f"its {n} evaluation(s) made after it was chosen" if n != c.n_evals else f"all {n} evaluation(s)"
    text = f"judged on {what}: {fmt.bpb(mean, sigma)} (n={n}, ± the run's noise σ̂)"
    if seed is None or seed.id == c.id or seed.val_bpb is None:
        return text
    p = acceptance.probability_better(mean, n, seed.val_bpb, seed.n_evals, sigma)
    return text + (f"; P(better than the seed #{seed.number}) {p:.2f}" if p is not None else
                   "; P(better than the seed): no noise σ̂ measured")


@app.command()
def export(
    which: Annotated[Optional[str], typer.Argument(help="Candidate number or 'best'.")] = None,
    to: Annotated[Optional[Path], typer.Option("--to", help="Write the candidate's train.py to this file.")] = None,
    branch: Annotated[Optional[str], typer.Option(help="Commit it as train.py on this new branch of --repo.")] = None,
    lineage: Annotated[Optional[str], typer.Option(help="Write this run's whole lineage as git history in --repo.")] = None,
    repo: Annotated[Path, typer.Option(help="Target git repository (default: the current folder).")] = Path("."),
    force: Annotated[bool, typer.Option(help="Overwrite an existing file or branch.")] = False,
    name: RunName = None,
    storage: Storage = DEFAULT_STORAGE,
) -> None:
    """Export a candidate to a file (--to) or a git branch (--branch), or a run's lineage to git (--lineage)."""
    from evo.gitio import GitError
    from evo.gitio.export import export_candidate, export_lineage

    modes = sum(x is not None for x in (to, branch, lineage))
    if modes != 1:
        raise fail("choose one of --to PATH, --branch NAME, or --lineage RUN.")
    if (lineage is None) == (which is None):
        raise fail("give a candidate (a number or 'best') with --to or --branch, and none with --lineage.")
    archive = open_archive(storage)
    try:
        if lineage is not None:
            summary = export_lineage(archive, lineage, repo)
            typer.echo(f"wrote {summary['commits']} commits of run {lineage} to {repo}: branch {summary['branch']} "
                       f"at the best (candidate {summary['best']['number']}); `git log --graph --all` shows the search")
            return
        if branch is not None:
            sha = export_candidate(archive, name, which, branch, repo, force)
            typer.echo(f"committed candidate {which} as train.py on branch {branch} ({sha[:10]}) in {repo}")
            return
    except GitError as e:
        raise fail(str(e))
    archive, r, (c,) = open_run(storage, name, which)
    if to.exists() and not force:
        raise fail(f"{to} exists; pass --force to overwrite it.")
    try:
        to.write_text(archive.code(c.code_hash))
    except OSError as e:
        raise fail(f"cannot write {to} ({e.strerror}).")
    typer.echo(f"wrote candidate {c.number} of run {r.name} to {to}")


@app.command()
def report(
    name: RunName = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output file or folder (default reports/<run>.html).")] = None,
    cdn: Annotated[bool, typer.Option("--cdn", help="Load plotly.js from its CDN: a small file that needs the network.")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Serve the report on this machine and keep it current while the run writes (the page reloads itself).")] = False,
    port: Annotated[int, typer.Option(help="With --watch: the port to serve on (0: any free one).", min=0, max=65535)] = 8765,
    host: Annotated[str, typer.Option(help="With --watch: the address to listen on (anything but loopback shows your code to the network).")] = "127.0.0.1",
    every: Annotated[float, typer.Option(help="With --watch: seconds between two looks at the archive.", min=0.5)] = 5.0,
    storage: Storage = DEFAULT_STORAGE,
) -> None:
    """Write a self-contained HTML report of a run: progress, lineage, candidates, diffs. Works mid-run;
    --watch serves one that follows the run."""
    from evo.report import write_report

    archive = open_archive(storage)
    try:
        if watch:
            from evo.report.watch import serve
            serve(archive, name, out, host=host, port=port, every=every, say=lambda m: typer.echo(m))
            return
        path = write_report(archive, name, out, cdn)
    except ArchiveError as e:
        raise fail(str(e), e.code)
    typer.echo(f"wrote {path}")
