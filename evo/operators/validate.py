"""Pure checks of a child train.py before it gets any slot time.

A child must parse; still import the locked names from prepare that its parent imported; not
redefine them or assign into prepare; not set or delete `EVO_*` environment variables (they steer
prepare and the harness); and import only the standard library, the project's dependencies and
prepare. Each failure is an `EditError` with one sentence the model can act on.
"""

from __future__ import annotations

import ast
import sys
from functools import lru_cache

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
    return frozenset(_prepare_imports(list(ast.walk(ast.parse(code)))))


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
        tree = ast.parse(code)
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
