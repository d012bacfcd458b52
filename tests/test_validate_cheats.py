"""validate_child refuses the cheap spellings of tampering with the locked apparatus (issue 11,
item 7), each written as a small edit of the real seed_train.py, with one sentence that says what
to do instead; the seed, an autoresearch-style train.py and ordinary code pass unchanged.

This is the courtesy layer (a repair round instead of a wasted slot); the sandbox and the separate
evaluation process are the defence and have their own tests."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from evo.operators.edits import EditError
from evo.operators.validate import validate_child

ROOT = Path(__file__).resolve().parent.parent
SEED = (ROOT / "seed_train.py").read_text()
AUTORESEARCH = (ROOT / "tests" / "fixtures" / "autoresearch_style_train.py").read_text()

TRAIN_LOADER = 'train_loader = make_dataloader(tokenizer, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, "train")\n'
EVALUATION = "    val_bpb = evaluate_bpb(model, tokenizer, DEVICE_BATCH_SIZE)\n"


def append(text: str) -> Callable[[str], str]:
    """Code added at the end of the seed, after its summary block."""
    return lambda code: code + "\n" + text + "\n"


def before_training(text: str) -> Callable[[str], str]:
    """Code added right before the training loader is built."""
    return replace(TRAIN_LOADER, text + "\n" + TRAIN_LOADER)


def replace(old: str, new: str) -> Callable[[str], str]:
    def edit(code: str) -> str:
        assert code.count(old) == 1, old
        return code.replace(old, new)
    return edit


CHEATS = [
    # prepare's module reached through sys.modules
    ("sys.modules subscript", append('sys.modules["prepare"].get_token_bytes = lambda device="cpu": torch.ones(8192)'),
     "reach into sys.modules"),
    ("sys.modules.get", append('p = sys.modules.get("prepare")'), "reach into sys.modules"),
    ("sys.modules iterated", append("for name, mod in list(sys.modules.items()):\n    pass"), "reach into sys.modules"),
    ("from sys import modules", append('from sys import modules\nmodules["prepare"].EVAL_TOKENS = 1024'),
     "reach into sys.modules"),
    # prepare's namespace reached through vars(), __dict__, __globals__, globals()
    ("vars(prepare)", append('import prepare\nvars(prepare)["get_token_bytes"] = lambda device="cpu": None'),
     r"namespace through vars\(prepare\)"),
    ("prepare.__dict__", append("import prepare\nnamespace = prepare.__dict__"), r"namespace through prepare\.__dict__"),
    ("__globals__ of a locked function", append('evaluate_bpb.__globals__["get_token_bytes"] = None'),
     "namespace through __globals__"),
    ("globals() subscript", append('globals()["TIME_BUDGET"] = 10_000'), r"write through globals\(\)"),
    ("globals().update", append("globals().update(TIME_BUDGET=10_000)"), r"write through globals\(\)"),
    ("math.__dict__", append('math.__dict__["log"] = lambda x: 0.0'), r"namespace through math.__dict__"),
    # getattr / setattr on prepare
    ("getattr with a computed name", append('import prepare\nname = "get_token_bytes"\nf = getattr(prepare, name)'),
     "look up prepare's names dynamically"),
    ("getattr of the evaluation key", append('import prepare\nkey = getattr(prepare, "_EVAL_KEY")'),
     "internal name _EVAL_KEY"),
    ("attribute read of the evaluation key", append("import prepare\nkey = prepare._EVAL_KEY"), "internal name _EVAL_KEY"),
    ("from-import of the evaluation key", before_training("from prepare import _EVAL_KEY"), "internal name _EVAL_KEY"),
    ("from-import of the data folder", before_training("from prepare import DATA_DIR"), "internal name DATA_DIR"),
    ("setattr on a locked function", append('setattr(evaluate_bpb, "__code__", norm.__code__)'), "setattr on prepare"),
    ("object.__setattr__ on prepare", append("import prepare\nobject.__setattr__(prepare, 'TIME_BUDGET', 1)"),
     "setattr on prepare"),
    ("a locked class patched", append("Tokenizer.get_vocab_size = lambda self: 2"), "assign into prepare"),
    # aliases of the module and dynamic imports
    ("alias of an alias", append("import prepare as p\nq = p\nq.evaluate_bpb = lambda *a: 0.5"),
     "handle the prepare module as an object"),
    ("module passed to a function", append("import prepare\ndef patch(m):\n    m.EVAL_TOKENS = 1\npatch(prepare)"),
     "handle the prepare module as an object"),
    ("__import__", append('P = __import__("prepare")\nP.evaluate_bpb = lambda *a: 0.5'),
     "import prepare through __import__ "),
    ("importlib.import_module", append('import importlib\nP = importlib.import_module("prepare")'),
     "import prepare through importlib.import_module"),
    ("import_module with a computed name",
     append('import importlib\nname = "prep" + "are"\nP = importlib.import_module(name)'),
     "import a module whose name is computed"),
    ("importlib.reload", append("import importlib\nimport prepare\nimportlib.reload(prepare)"), "reload modules"),
    ("a second copy of prepare.py",
     append('import importlib.util\nspec = importlib.util.spec_from_file_location("p2", "prepare.py")'),
     "load or reload modules"),
    ("runpy", append('import runpy\nrunpy.run_path("prepare.py")'), "import runpy"),
    ("exec", append('exec("import prepare; prepare.TIME_BUDGET = 1e9")'), "run code built from strings"),
    # native code, object walks, frames, processes
    ("ctypes", before_training("import ctypes"), "use ctypes"),
    ("gc.get_referrers", append("holders = gc.get_referrers(evaluate_bpb)"), "walk the interpreter's objects"),
    ("gc.get_objects", append("objs = gc.get_objects()"), "walk the interpreter's objects"),
    ("caller's frame", append("def forward_hook():\n    return sys._getframe(1).f_locals"), "inspect interpreter frames"),
    ("fork", append("if os.fork() == 0:\n    os.setsid()"), "start, signal or detach processes"),
    ("subprocess", before_training("import subprocess"), "import subprocess"),
    # monkeypatching what the score or the clock is computed with
    ("math.log", append("math.log = lambda x: 0.5 * x"), r"replace math\.log"),
    ("F.cross_entropy", before_training("F.cross_entropy = lambda *a, **k: torch.zeros(())"),
     r"replace torch\.nn\.functional\.cross_entropy"),
    ("full path of cross_entropy", append("torch.nn.functional.cross_entropy = None"),
     r"replace torch\.nn\.functional\.cross_entropy"),
    ("from-imported module patched", append("from torch.nn import functional\nfunctional.cross_entropy = None"),
     r"replace torch\.nn\.functional\.cross_entropy"),
    ("setattr on math", append('setattr(math, "log", lambda x: 0.0)'), r"replace math\.log"),
    ("slowed clock", before_training("time.time = lambda: 0.0"), r"replace time\.time"),
    # prepare.py, the data cache, the archive, /proc, writes outside the folder
    ("prepare.py appended to", append('open("prepare.py", "a").write("TIME_BUDGET = 10**6\\n")'), "touch prepare.py"),
    ("manifest rewritten", append('open(os.path.expanduser("~/.cache/evo/gpu/manifest.json"), "w").write("{}")'),
     "write to a file outside its own folder"),
    ("cache read through the variable", append('root = os.environ["EVO_CACHE_DIR"]'),
     "touch prepare.py, the prepared data"),
    ("cache folder", append('warm = Path.home() / ".cache" / "evo" / "warm.pt"'), "touch prepare.py, the prepared data"),
    ("cache path", append('warm = os.path.expanduser("~/.cache/evo/gpu/data")'), "touch prepare.py, the prepared data"),
    ("warm start in /tmp", append('torch.save(model.state_dict(), open("/tmp/warm.pt", "wb"))'),
     "write to a file outside its own folder"),
    ("write through a variable holding a path outside",
     append('OUT = "/tmp/warm.pt"\nwith open(OUT, "wb") as f:\n    pass'),
     "write to a file outside its own folder"),
    ("archive rewritten", append('open("../../archive/evo.db", "r+b")'), "write to a file outside its own folder"),
    ("evaluation record forged", append('record = os.environ.get("EVO_EVAL_RECORD")'), "the evaluation's record"),
    ("parent's environment", append('keys = open("/proc/1/environ").read()'), "touch prepare.py, the prepared data"),
    ("prepare.py removed", append('os.remove("../slot-1/prepare.py")'), "call os.remove on a path"),
    ("Path written outside", append('from pathlib import Path\nPath("/tmp/x").write_text("1")'),
     "write_text a path that is not a plain relative one"),
    # the validation split
    ("val split positional", replace(TRAIN_LOADER, TRAIN_LOADER.replace('"train"', '"val"')), "read the 'val' split"),
    ("val split keyword", replace(TRAIN_LOADER, TRAIN_LOADER.replace('"train"', 'split="val"')), "read the 'val' split"),
    ("val split through a variable", replace(TRAIN_LOADER, 'SPLIT = "val"\n' + TRAIN_LOADER.replace('"train"', "SPLIT")),
     "read the 'val' split"),
    ("computed split", replace(TRAIN_LOADER, TRAIN_LOADER.replace('"train"', '"tr" + "ain"')),
     "pass a computed split to make_dataloader"),
    # choosing among several evaluations
    ("evaluated twice", replace(EVALUATION, EVALUATION + "    val_bpb = min(val_bpb, evaluate_bpb(model, tokenizer, 1))\n"),
     "call evaluate_bpb more than once"),
    ("evaluated in a loop", replace(EVALUATION, "    for _ in range(3):\n    " + EVALUATION),
     "call evaluate_bpb inside a loop"),
]


@pytest.mark.parametrize("edit, phrase", [pytest.param(e, p, id=name) for name, e, p in CHEATS])
def test_cheat_is_refused_with_a_sentence_saying_what_to_do(edit: Callable[[str], str], phrase: str):
    child = edit(SEED)
    with pytest.raises(EditError, match=phrase) as refused:
        validate_child(child, SEED)
    sentence = str(refused.value)
    # one sentence for the model: what it must not do, where, and what to do instead
    what, _, instead = sentence.partition("; ")
    assert sentence.startswith("train.py must not") and "(line " in what and instead.endswith(".") and len(instead) > 10


def test_seed_and_autoresearch_style_pass_unchanged():
    validate_child(SEED, SEED)
    validate_child(SEED)
    validate_child(AUTORESEARCH, AUTORESEARCH)
    validate_child(AUTORESEARCH)


LEGIT = '''
import importlib.util
from pathlib import Path

with open("log.txt", "w") as f:
    f.write("done\\n")
with open("log.txt") as f:
    f.read()
Path("notes.txt").write_text("fine")
os.makedirs("checkpoints", exist_ok=True)
torch.save(model.state_dict(), "checkpoints/final.pt")
head = getattr(model, "lm_head")
name = "lm_head"
head = getattr(model, name)
setattr(config, "softcap", 20.0)
DTYPE_NAME = "bfloat16"
dtype = getattr(torch, DTYPE_NAME)
fast_norm = torch.compile(norm, dynamic=False)
torch.backends.cuda.matmul.allow_tf32 = True
torch._dynamo.config.cache_size_limit = 64
torch._inductor.config.coordinate_descent_tuning = True
have_fa3 = "flash_attn_interface" in sys.modules or importlib.util.find_spec("flash_attn_interface") is not None
log = math.log
gc.collect()
print("prepare.py is locked; data lives in ~/.cache/evo")
assert step > 0, "prepare.py sets the budget"
with open(f"log_{seed}.txt", "a") as f:
    f.write(f"{val_bpb:.6f}\\n")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.expanduser("~/.cache/inductor")
LOG_FILE = "run.log"
with open(LOG_FILE, "a") as f:
    f.write(f"{val_bpb:.6f}\\n")


@dataclass(frozen=True)
class Frozen:
    x: int

    def __post_init__(self):
        object.__setattr__(self, "x", 2 * self.x)
'''


def test_ordinary_code_passes():
    validate_child(SEED + LEGIT, SEED)
    # a split variable that only ever holds "train"
    validate_child(SEED.replace(TRAIN_LOADER, 'SPLIT = "train"\n' + TRAIN_LOADER.replace('"train"', "SPLIT")), SEED)


@pytest.mark.parametrize("odd", [
    'open(f"", "w")', "make_dataloader(*args)", "__import__(*names)", "import prepare\ngetattr(prepare)", "setattr()",
    "object.__setattr__()", "globals()[k]: int = 1", "x = open", 'os.open("log.txt")', "Path().write_text('x')",
    "del math.log", "math.pi += 1", "(lambda: evaluate_bpb)()", "f = lambda: make_dataloader(tokenizer, 1, 1)",
])
def test_odd_code_gets_a_sentence_or_passes_never_a_traceback(odd: str):
    try:
        validate_child(SEED + "\n" + odd + "\n", SEED)
    except EditError as e:
        assert str(e).startswith("train.py ") and str(e).endswith(".")
