"""Pure checks of a child train.py before it gets any slot time.

A child must parse; still import the locked names from prepare that its parent imported; not
redefine them or assign into prepare; not set or delete `EVO_*` environment variables (they steer
prepare and the harness); and import only the standard library, the project's dependencies and
prepare. Each failure is an `EditError` with one sentence the model can act on.

It must also avoid the cheap spellings of tampering with the locked apparatus (`_check_apparatus`):
reaching prepare through sys.modules, vars(), __dict__/__globals__, a module alias or a dynamic
import; ctypes, gc's object walks, frame inspection, exec/eval, starting processes; replacing a
library function (math.log, F.cross_entropy); touching prepare.py, the data cache or /proc, or
writing outside the candidate's folder; reading the validation split; evaluating more than once.
This is a courtesy to the model, not the defence: an LLM that writes such code gets a repair round
with a sentence saying what to do instead, rather than a wasted slot. A determined candidate can
spell any of these in a way no AST check sees; what keeps scores honest is the sandbox around the
training process and the separate evaluation process that alone computes val_bpb.
"""

from __future__ import annotations

import ast
import builtins
import re
import sys
from functools import lru_cache
from typing import Callable, NoReturn

from evo.operators.base import parse
from evo.operators.edits import EditError

# The names program.md requires a train.py to import from prepare and never redefine.
LOCKED_NAMES = ("MAX_SEQ_LEN", "TIME_BUDGET", "Tokenizer", "make_dataloader", "evaluate_bpb")
# The rest of prepare's contract (design brief): a child that imports one must not shadow it.
CONTRACT_NAMES = LOCKED_NAMES + ("EVAL_TOKENS", "VOCAB_SIZE", "get_token_bytes")

# Import names of pyproject's dependencies, the optional FA3 hub loader autoresearch's train.py
# tries, the locally installed FA3 package the seed tries (flash_attn_interface), triton
# (installed with CUDA builds of torch, for custom kernels), and prepare itself.
PROJECT_PACKAGES = frozenset({
    "torch", "numpy", "scipy", "sqlmodel", "sqlalchemy", "git", "anthropic", "openai", "tiktoken", "rustbpe",
    "pyarrow", "requests", "plotly", "typer", "rich", "kernels", "flash_attn_interface", "triton", "prepare",
})
ALLOWED_IMPORTS = frozenset(getattr(sys, "stdlib_module_names", ())) | PROJECT_PACKAGES

_ENV_WRITERS = {"update", "setdefault", "pop", "__setitem__", "__delitem__", "clear", "popitem"}


def prepare_imports(code: str | ast.Module) -> set[str]:
    """Names a train.py takes from prepare: `from prepare import X` (any nesting level), plus
    `prepare.X` attribute reads after `import prepare [as p]`."""
    if isinstance(code, str):
        return set(_parent_imports(code))
    return _prepare_imports(list(ast.walk(code)))


@lru_cache(maxsize=64)
def _parent_imports(code: str) -> frozenset[str]:
    return frozenset(_prepare_imports(list(ast.walk(parse(code)))))


def _prepare_imports(nodes: list[ast.AST]) -> set[str]:
    names: set[str] = set()
    aliases: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module == "prepare" and node.level == 0:
            names.update(a.name for a in node.names if a.name != "*")
            if any(a.name == "*" for a in node.names):
                names.update(LOCKED_NAMES)
        elif isinstance(node, ast.Import):
            aliases.update(a.asname or a.name for a in node.names if a.name == "prepare")
    if aliases:
        for node in nodes:
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                names.add(node.attr)
    return names


def validate_child(code: str, parent_code: str | None = None, *,
                   allowed_imports: frozenset[str] | set[str] = ALLOWED_IMPORTS) -> None:
    """Raise EditError when the child may not be evaluated. The locked names it must keep are
    those of LOCKED_NAMES its parent imported (all of them without a parent)."""
    try:
        tree = parse(code)
    except SyntaxError as e:
        line = (e.text or "").strip()
        where = f" at line {e.lineno}" + (f" ({line[:80]!r})" if line else "")
        raise EditError(f"the new train.py does not parse: {e.msg}{where}.") from None
    except ValueError as e:  # null bytes
        raise EditError(f"the new train.py does not parse ({e}).") from None

    required = set(LOCKED_NAMES)
    if parent_code is not None:
        try:
            required &= prepare_imports(parent_code)
        except SyntaxError:
            pass
    nodes = list(ast.walk(tree))
    have = _prepare_imports(nodes)
    missing = sorted(required - have, key=LOCKED_NAMES.index)
    if missing:
        raise EditError(f"train.py must keep importing {', '.join(missing)} from prepare "
                        "(`from prepare import ...`); prepare.py is the locked apparatus.")
    evaluators = {"evaluate_bpb"} | {a.asname for n in nodes if isinstance(n, ast.ImportFrom) and n.module == "prepare"
                                     for a in n.names if a.name == "evaluate_bpb" and a.asname}
    if "evaluate_bpb" in required and not _calls(nodes, evaluators):
        raise EditError("train.py must still call evaluate_bpb from prepare once at the end; the score comes only from it.")

    _check_redefinitions(tree, nodes, have)
    _check_environment(nodes)
    _check_imports(nodes, allowed_imports)
    _check_apparatus(tree, nodes)
    _check_undefined(nodes, parent_code)


# Names Python binds in a module or class body without an assignment.
IMPLICIT_NAMES = frozenset({"__file__", "__name__", "__doc__", "__spec__", "__loader__", "__builtins__", "__package__",
                            "__path__", "__cached__", "__annotations__", "__qualname__", "__module__", "__class__",
                            "__dict__"})


def undefined_names(nodes: list[ast.AST]) -> set[str]:
    """Names the code reads that nothing in it binds and that are not builtins: a NameError
    waiting to happen. Scopes are not tracked (a name bound anywhere counts as bound), so this
    only finds names that cannot resolve anywhere; a star import makes every name possible."""
    bound = set(dir(builtins)) | IMPLICIT_NAMES
    used: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("globals", "vars",
                                                                                                 "locals"):
            return set()  # names may be bound through the namespace itself
        if isinstance(node, ast.Name):
            (used if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            if node.name == "*":
                return set()
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound.update(node.names)
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            bound.add(node.rest)
    return used - bound


def _check_undefined(nodes: list[ast.AST], parent_code: str | None) -> None:
    missing = undefined_names(nodes)
    if missing and parent_code is not None:
        try:
            missing -= undefined_names(list(ast.walk(parse(parent_code))))
        except SyntaxError:
            pass
    if missing:
        names = ", ".join(sorted(missing)[:8])
        raise EditError(f"the new train.py uses {names} but never defines or imports {'it' if len(missing) == 1 else 'them'} "
                        "(code left out, or a definition removed); keep the definitions the code still uses.")


def _calls(nodes: list[ast.AST], names: set[str]) -> bool:
    for node in nodes:
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id in names) or (isinstance(f, ast.Attribute) and f.attr in names):
                return True
    return False


def _targets(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, ast.Assign):
        return list(node.targets)
    if isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        return [node.target]
    return []


def _names_in(target: ast.expr) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for elt in target.elts for n in _names_in(elt)]
    if isinstance(target, ast.Starred):
        return _names_in(target.value)
    return []


def _check_redefinitions(tree: ast.Module, nodes: list[ast.AST], imported: set[str]) -> None:
    protected = set(LOCKED_NAMES) | (set(CONTRACT_NAMES) & imported)
    for node in tree.body:
        defined: list[str] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined = [node.name]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if isinstance(node, ast.ImportFrom) and node.module == "prepare":
                # `from prepare import X as Y` binds Y to prepare's X: only a rename onto another locked name is a lie
                defined = [a.asname for a in node.names if a.asname and a.asname != a.name]
            else:
                defined = [(a.asname or a.name).split(".")[0] for a in node.names]
        else:
            for target in _targets(node):
                defined += _names_in(target)
        clash = [name for name in defined if name in protected]
        if clash:
            raise EditError(f"train.py must not redefine {clash[0]} (line {node.lineno}); it comes from the locked prepare.py.")
    aliases = {a.asname or a.name for n in nodes if isinstance(n, ast.Import) for a in n.names if a.name == "prepare"}
    aliases.add("prepare")
    for node in nodes:
        for target in _targets(node) + (list(node.targets) if isinstance(node, ast.Delete) else []):
            base = target
            while isinstance(base, (ast.Attribute, ast.Subscript)):
                base = base.value
            if isinstance(target, (ast.Attribute, ast.Subscript)) and isinstance(base, ast.Name) and base.id in aliases:
                raise EditError(f"train.py must not assign into prepare (line {node.lineno}); prepare.py is locked.")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr") \
                and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in aliases:
            raise EditError(f"train.py must not {node.func.id} on prepare (line {node.lineno}); prepare.py is locked.")


def _evo_literal(node: ast.AST | None) -> bool:
    """A string literal (or f-string) that starts with EVO_."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.startswith("EVO_")
    if isinstance(node, ast.JoinedStr) and node.values:
        first = node.values[0]
        return isinstance(first, ast.Constant) and isinstance(first.value, str) and first.value.startswith("EVO_")
    return False


def _is_environ(node: ast.AST, environ_names: set[str]) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or \
        (isinstance(node, ast.Name) and node.id in environ_names)


def _check_environment(nodes: list[ast.AST]) -> None:
    environ_names = {a.asname or a.name for n in nodes if isinstance(n, ast.ImportFrom) and n.module == "os"
                     for a in n.names if a.name == "environ"}
    putenv_names = {"putenv", "unsetenv"} & {a.asname or a.name for n in nodes
                                            if isinstance(n, ast.ImportFrom) and n.module == "os" for a in n.names}
    for node in nodes:
        bad = False
        # os.environ["EVO_X"] = ..., del os.environ["EVO_X"], os.environ["EVO_X"] += ...
        for target in _targets(node) + (list(node.targets) if isinstance(node, ast.Delete) else []):
            if isinstance(target, ast.Subscript) and _is_environ(target.value, environ_names) and _evo_literal(target.slice):
                bad = True
            if isinstance(node, ast.AugAssign) and _is_environ(target, environ_names) and isinstance(node.value, ast.Dict) \
                    and any(_evo_literal(k) for k in node.value.keys):
                bad = True
        if isinstance(node, ast.Call):
            f = node.func
            # os.environ.update({...} / EVO_X=...), os.environ.setdefault("EVO_X", ...), .pop(...)
            if isinstance(f, ast.Attribute) and f.attr in _ENV_WRITERS and _is_environ(f.value, environ_names):
                keys = [a for a in node.args[:1]]
                if node.args and isinstance(node.args[0], ast.Dict):
                    keys = list(node.args[0].keys)
                if any(_evo_literal(k) for k in keys) or any((kw.arg or "").startswith("EVO_") for kw in node.keywords):
                    bad = True
            # os.putenv("EVO_X", ...), os.unsetenv("EVO_X")
            if ((isinstance(f, ast.Attribute) and f.attr in ("putenv", "unsetenv")) or
                    (isinstance(f, ast.Name) and f.id in putenv_names)) and node.args and _evo_literal(node.args[0]):
                bad = True
        if bad:
            raise EditError(f"train.py must not set or remove EVO_* environment variables (line {node.lineno}); "
                            "the harness owns them.")


def _check_imports(nodes: list[ast.AST], allowed: frozenset[str] | set[str]) -> None:
    for node in nodes:
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise EditError(f"train.py is a single file: the relative import on line {node.lineno} cannot work.")
            modules = [node.module or ""]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            if (isinstance(f, ast.Name) and f.id == "__import__") or \
                    (isinstance(f, ast.Attribute) and f.attr == "import_module"):
                modules = [node.args[0].value]
        for module in modules:
            top = module.split(".")[0]
            if top and top not in allowed:
                raise EditError(f"train.py imports {top!r} (line {node.lineno}), which is not installed for candidates; "
                                "use the standard library, torch, numpy or another package already in use.")


# ---------------------------------------------------------------------------
# Tampering with the locked apparatus (a courtesy to the model; see the module docstring)
# ---------------------------------------------------------------------------

# prepare's names that lead to where the data, the tokenizer files and the evaluation key live, or
# that rebuild the data: a train.py needs none of them (its contract is CONTRACT_NAMES).
_PREPARE_INTERNAL = re.compile(r"^_|CACHE|DATA_DIR|TOKENIZER_DIR|MANIFEST|KEY|RECORD|^(prepare|main|write_shard|"
                               r"read_documents|download_\w+|train_tokenizer|split_documents)$")
_CONTRACT_HINT = "use only its contract (MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, make_dataloader, evaluate_bpb)"
# Patterns of strings that name prepare.py, the prepared data cache (~/.cache/evo), the archive, the
# evaluation's record or another process's state -> what to do instead.
_READ_DATA = "read training data only through make_dataloader(tokenizer, B, T, \"train\")"
_PROTECTED_TEXT = {
    r"prepare\.py": "prepare.py is locked: use its names through `from prepare import ...`",
    r"\.cache(/evo|/?$)": _READ_DATA, "EVO_CACHE_DIR": _READ_DATA, r"manifest\.json": _READ_DATA, r"\.parquet": _READ_DATA,
    r"evo\.db": "the archive is the harness's: keep notes in files of train.py's own folder",
    "EVO_EVAL": "the evaluation and its record are the harness's: call evaluate_bpb once and print its result",
    "/proc": "for memory use, read torch.cuda.max_memory_allocated() or resource.getrusage()",
}
_FRAMES = {"sys._getframe", "sys._current_frames", "inspect.currentframe", "inspect.stack", "inspect.trace",
           "inspect.getouterframes", "inspect.getmodule"}
_FRAME_ATTRS = {"f_globals", "f_locals", "f_back", "f_builtins", "tb_frame", "gi_frame", "cr_frame"}
_GC_WALKS = {"gc.get_objects", "gc.get_referrers", "gc.get_referents"}
_LOADERS = ("importlib.util.spec_from_file_location", "importlib.util.module_from_spec", "importlib.machinery",
            "runpy", "zipimport")
_PROCESS_MODULES = {"subprocess", "pty"}
_PROCESS_CALLS = re.compile(r"^os\.(fork|forkpty|setsid|system|popen|kill|killpg|exec\w*|spawn\w*|posix_spawn\w*)$")
_FILE_MUTATORS = re.compile(r"^(os\.(remove|unlink|rename|renames|replace|rmdir|removedirs|chmod|chown|truncate|link|"
                            r"symlink|utime)|shutil\.(copy\w*|move|rmtree|chown))$")
_OPENERS = {"builtins.open", "io.open", "os.open", "codecs.open"}
# Builtins the checks look for, so that `open(...)` and `builtins.open(...)` read alike.
_BUILTINS = {"open", "exec", "eval", "compile", "__import__", "vars", "globals", "locals", "getattr", "hasattr",
             "setattr", "delattr", "print"}
_SENSITIVE_MODULES = {"prepare", "builtins", "sys", "os", "importlib", "gc", "inspect"}

_Refuse = Callable[[ast.AST, str, str], NoReturn]   # raises EditError: what not to do, what to do instead


def _import_paths(nodes: list[ast.AST]) -> dict[str, str]:
    """Each name an import binds -> the dotted path it stands for (`F` -> torch.nn.functional)."""
    paths = {"__builtins__": "builtins"}
    for node in nodes:
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                paths[a.asname or top] = a.name if a.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            paths.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names if a.name != "*"})
    return paths


def _path(node: ast.AST, paths: dict[str, str]) -> str | None:
    """The dotted path of a chain of attributes on an imported name (`F.cross_entropy` ->
    torch.nn.functional.cross_entropy); bare `open`, `exec`... resolve to builtins."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    base = paths.get(node.id) or (f"builtins.{node.id}" if node.id in _BUILTINS else None)
    return ".".join([base, *reversed(parts)]) if base else None


def _in(path: str | None, prefix: str) -> bool:
    return path is not None and (path == prefix or path.startswith(prefix + "."))


def _str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _arg(call: ast.Call, index: int, name: str) -> ast.expr | None:
    if len(call.args) > index and not any(isinstance(a, ast.Starred) for a in call.args[:index + 1]):
        return call.args[index]
    return next((kw.value for kw in call.keywords if kw.arg == name), None)


def _local_file(node: ast.AST | None, assigned: dict[str, list[ast.expr]]) -> bool:
    """A path written as a literal inside the candidate's own folder: relative, no ~, no ..; or a
    variable only ever given such literals (`LOG = "run.log"`)."""
    if isinstance(node, ast.Name):
        values = assigned.get(node.id, [])
        return bool(values) and all(not isinstance(v, ast.Name) and _local_file(v, assigned) for v in values)
    text = _str(node)
    if isinstance(node, ast.JoinedStr):   # f"log_{seed}.txt": the literal parts decide
        parts = [_str(v) for v in node.values]
        if not parts or parts[0] is None or any(p is not None and ".." in p for p in parts):
            return False
        text = parts[0]
    if text is None:
        return False
    return not (text.startswith(("/", "~", "\\")) or ".." in text.replace("\\", "/").split("/") or ":" in text)


def _settings(path: str) -> bool:
    """Library switches a train.py legitimately assigns (torch.backends..., torch._dynamo.config...)."""
    parts = path.split(".")
    return (path.startswith("torch.backends.") or any(p.endswith("config") for p in parts[:-1])
            or path in ("sys.stdout", "sys.stderr"))


def _own_namespace(node: ast.AST, paths: dict[str, str]) -> bool:
    """`globals()`, `vars()` or `locals()`: train.py's own namespace, where the locked names live."""
    return isinstance(node, ast.Call) and not node.args \
        and _path(node.func, paths) in ("builtins.globals", "builtins.vars", "builtins.locals")


def _messages(nodes: list[ast.AST], paths: dict[str, str]) -> list[ast.expr]:
    """What train.py prints, raises or asserts with: text for people, free to name prepare.py."""
    found: list[ast.expr | None] = []
    for n in nodes:
        if isinstance(n, ast.Call) and _path(n.func, paths) == "builtins.print":
            found += [*n.args, *(kw.value for kw in n.keywords)]
        elif isinstance(n, ast.Raise):
            found.append(n.exc)
        elif isinstance(n, ast.Assert):
            found.append(n.msg)
    return [m for m in found if m is not None]


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body \
                and isinstance(node.body[0], ast.Expr) and _str(node.body[0].value) is not None:
            ids.add(id(node.body[0].value))
    return ids


def _check_apparatus(tree: ast.Module, nodes: list[ast.AST]) -> None:
    paths = _import_paths(nodes)
    modules = {name for name, path in paths.items() if path == "prepare"}   # `import prepare [as p]`
    parents = {id(child): parent for parent in nodes for child in ast.iter_child_nodes(parent)}
    # docstrings and printed messages may mention prepare.py or the cache
    skip_text = _docstrings(tree) | {id(c) for m in _messages(nodes, paths) for c in ast.walk(m)}
    assigned: dict[str, list[ast.expr]] = {}
    for node in nodes:
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.NamedExpr)) and node.value is not None:
            for target in ([node.target] if not isinstance(node, ast.Assign) else node.targets):
                for name in _names_in(target):
                    assigned.setdefault(name, []).append(node.value)
    evaluations: list[ast.Call] = []

    def refuse(node: ast.AST, what: str, instead: str) -> NoReturn:
        raise EditError(f"train.py must not {what} (line {getattr(node, 'lineno', '?')}); {instead}.")

    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                if top in ("ctypes", "_ctypes"):
                    refuse(node, "use ctypes",
                           "write the model in torch (custom kernels through triton or torch.compile)")
                if top in _PROCESS_MODULES:
                    refuse(node, f"import {top}", "do the work inside train.py's own process with Python and torch")
                if top in ("runpy", "zipimport"):
                    refuse(node, f"import {top}", "load code only through import statements")
            if isinstance(node, ast.ImportFrom) and node.module == "prepare":
                for a in node.names:
                    if _PREPARE_INTERNAL.search(a.name):
                        refuse(node, f"use prepare's internal name {a.name}", _CONTRACT_HINT)
        elif isinstance(node, (ast.Name, ast.Attribute)) and isinstance(node.ctx, ast.Load):
            _check_reference(node, parents.get(id(node)), paths, modules, refuse)
        elif isinstance(node, ast.Call):
            _check_call(node, paths, assigned, refuse, evaluations)
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            for target in _targets(node) + (list(node.targets) if isinstance(node, ast.Delete) else []):
                path = _path(target, paths) if isinstance(target, ast.Attribute) else None
                if _in(path, "prepare"):
                    refuse(node, "assign into prepare", "prepare.py is locked")
                if isinstance(target, ast.Subscript) and _own_namespace(target.value, paths):
                    refuse(node, "write through globals()", "set values by plain assignment (`LR = 0.01`)")
                if path is not None and not _settings(path):
                    refuse(node, f"replace {path}",
                           "patching a library changes what all code computes: write your own function under a new name")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip_text:
            hit = next(((p, m) for p in _PROTECTED_TEXT if (m := re.search(p, node.value))), None)
            if hit:
                refuse(node, f"touch prepare.py, the prepared data, the archive, the evaluation's record or /proc "
                       f"({hit[1].group()!r})", _PROTECTED_TEXT[hit[0]])
    _check_evaluations(evaluations, parents, refuse)


def _check_reference(node: ast.Name | ast.Attribute, parent: ast.AST | None, paths: dict[str, str], modules: set[str],
                     refuse: _Refuse) -> None:
    """A name or attribute read: the module objects and interpreter internals it may not reach."""
    path = _path(node, paths)
    if isinstance(node, ast.Name) and node.id in modules and not (
            isinstance(parent, ast.Attribute) and parent.value is node) and not (
            isinstance(parent, ast.Call) and parent.args and parent.args[0] is node
            and _path(parent.func, paths) in ("builtins.getattr", "builtins.hasattr")):
        refuse(node, "handle the prepare module as an object",
               "use prepare's names directly (`from prepare import evaluate_bpb`)")
    if path == "sys.modules" and not (isinstance(parent, ast.Compare) and node in parent.comparators
                                      and all(isinstance(op, (ast.In, ast.NotIn)) for op in parent.ops)):
        refuse(node, "reach into sys.modules", "import what you need by name and leave prepare's module alone")
    if path in _FRAMES or (isinstance(node, ast.Attribute) and node.attr in _FRAME_ATTRS):
        refuse(node, "inspect interpreter frames or look up modules through inspect",
               "pass values explicitly as function arguments")
    if path in _GC_WALKS:
        refuse(node, "walk the interpreter's objects with gc",
           "reach objects through your own variables (gc.collect, gc.freeze and gc.disable are fine)")
    if path in ("builtins.exec", "builtins.eval", "builtins.compile"):
        refuse(node, "run code built from strings (exec, eval, compile)", "write the code out in train.py")
    if path is not None and _PROCESS_CALLS.match(path):
        refuse(node, f"start, signal or detach processes ({path})",
               "do the work inside train.py's own process with Python and torch")
    if _in(path, "importlib.reload") or any(_in(path, p) for p in _LOADERS):
        refuse(node, f"load or reload modules with {path}", "load code only through import statements")
    if isinstance(node, ast.Attribute) and node.attr in ("__globals__", "__builtins__"):
        refuse(node, f"reach a module's namespace through {node.attr}",
               "use the module's names directly after importing them")
    if isinstance(node, ast.Name) and node.id == "__builtins__":
        refuse(node, "reach a module's namespace through __builtins__", "call builtins by their plain names")
    if isinstance(node, ast.Attribute) and node.attr == "__dict__" and _path(node.value, paths) is not None:
        refuse(node, f"reach a module's namespace through {_path(node.value, paths)}.__dict__",
               "use the module's names directly after importing them")
    if isinstance(node, ast.Attribute) and _in(_path(node.value, paths), "prepare") \
            and _PREPARE_INTERNAL.search(node.attr):
        refuse(node, f"use prepare's internal name {node.attr}", _CONTRACT_HINT)


def _check_call(node: ast.Call, paths: dict[str, str], assigned: dict[str, list[ast.expr]], refuse: _Refuse,
                evaluations: list[ast.Call]) -> None:
    func = _path(node.func, paths)
    first = node.args[0] if node.args else None
    first_path = _path(first, paths) if first is not None else None
    if func in ("builtins.__import__", "importlib.import_module"):
        name, how = _str(first), func.removeprefix("builtins.")
        if name is None:
            refuse(node, f"import a module whose name is computed ({how})", "write a plain import statement")
        if name.split(".")[0] == "prepare":
            refuse(node, f"import prepare through {how}", "import it with a plain `from prepare import ...`")
    if func in ("builtins.vars", "builtins.globals", "builtins.locals"):
        if first_path is not None:
            refuse(node, f"reach a module's namespace through vars({first_path})",
                   "use the module's names directly after importing them")
    setter = None
    if func in ("builtins.setattr", "builtins.delattr"):
        setter, target, name = func[len("builtins."):], first_path, _str(_arg(node, 1, "name"))
    elif isinstance(node.func, ast.Attribute) and node.func.attr in ("__setattr__", "__delattr__"):
        setter, receiver = node.func.attr.strip("_"), node.func.value
        if isinstance(receiver, ast.Name) and receiver.id in ("object", "type"):   # object.__setattr__(obj, name, v)
            target, name = first_path, _str(_arg(node, 1, "name"))
        else:
            target, name = _path(receiver, paths), _str(first)
    if setter is not None:
        if _in(target, "prepare"):
            refuse(node, f"{setter} on prepare", "prepare.py is locked")
        if target is not None and not _settings(f"{target}.{name or 'x'}"):
            refuse(node, f"replace {target}.{name or '<computed name>'}",
                   "patching a library changes what all code computes: write your own function under a new name")
    if func in ("builtins.getattr", "builtins.hasattr") and first_path is not None:
        name = _str(_arg(node, 1, "name"))
        top = first_path.split(".")[0]
        if name is None and top in _SENSITIVE_MODULES:
            refuse(node, f"look up {first_path}'s names dynamically", "name the attribute directly")
        if name is not None and _in(first_path, "prepare") and _PREPARE_INTERNAL.search(name):
            refuse(node, f"use prepare's internal name {name}", _CONTRACT_HINT)
    # writes through one's own namespace can replace the locked names: globals().update(TIME_BUDGET=...)
    if isinstance(node.func, ast.Attribute) and node.func.attr in _ENV_WRITERS and _own_namespace(node.func.value, paths):
        refuse(node, "write through globals()", "set values by plain assignment (`LR = 0.01`)")
    if func in _OPENERS or (isinstance(node.func, ast.Attribute) and node.func.attr == "open" and func is None):
        bare = func is None   # Path(...).open(mode): the mode is the first argument
        mode = _arg(node, 0 if bare else 1, "flags" if func == "os.open" else "mode")
        text = _str(mode)
        writes = mode is not None and (text is None or any(c in text for c in "wax+"))
        if func == "os.open":
            writes = True
        where = node.func.value if bare else _arg(node, 0, "file")
        if bare and isinstance(where, ast.Call):   # Path("log.txt").open("w")
            where = _arg(where, 0, "")
        if writes and not _local_file(where, assigned):
            refuse(node, "write to a file outside its own folder or one named by a computed path",
                   "write only to files named by a plain relative path, e.g. open(\"log.txt\", \"w\")")
    if isinstance(node.func, ast.Attribute) and node.func.attr in ("write_text", "write_bytes", "unlink", "touch",
                                                                    "symlink_to", "hardlink_to") and func is None:
        where = node.func.value
        if not (isinstance(where, ast.Call) and _local_file(_arg(where, 0, ""), assigned)):
            refuse(node, f"{node.func.attr} a path that is not a plain relative one",
                   "write only to files named by a plain relative path, e.g. Path(\"log.txt\").write_text(...)")
    if func is not None and _FILE_MUTATORS.match(func) \
            and not all(_local_file(a, assigned) for a in node.args
                        if not isinstance(a, ast.Constant) or isinstance(a.value, str)):
        refuse(node, f"call {func} on a path that is not a plain relative one",
               "change only files in train.py's own folder, named by plain relative paths")
    if func == "prepare.make_dataloader":
        split = _arg(node, 3, "split")
        # a variable is fine when every value it is ever given is "train"
        values = assigned.get(split.id, []) if isinstance(split, ast.Name) else [split]
        if not values or any(_str(v) != "train" for v in values):
            split = next((v for v in values if _str(v) not in (None, "train")), split)
            refuse(node, f"read the {_str(split)!r} split" if _str(split) else "pass a computed split to make_dataloader",
                   "train on the \"train\" split only: make_dataloader(tokenizer, B, T, \"train\"); "
                   "the validation split is evaluate_bpb's")
    if func == "prepare.evaluate_bpb":
        evaluations.append(node)


def _check_evaluations(evaluations: list[ast.Call], parents: dict[int, ast.AST], refuse: _Refuse) -> None:
    """One evaluation, after training: a second call, or one inside a loop, picks among scores."""
    if len(evaluations) > 1:
        refuse(evaluations[1], "call evaluate_bpb more than once", "call it once, after training; its score is final")
    for call in evaluations:
        node: ast.AST | None = call
        while node is not None and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            if isinstance(node, (ast.For, ast.AsyncFor, ast.While, ast.comprehension)):
                refuse(call, "call evaluate_bpb inside a loop", "call it once, after training; its score is final")
            node = parents.get(id(node))
