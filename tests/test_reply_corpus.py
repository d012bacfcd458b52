"""The reply corpus (tests/support/replies.py): every reply either applies to exactly the
expected child, with the expected hypothesis, or is refused with a message that names the fix.
None is misapplied, and the recoverable ones apply without a repair round."""

from __future__ import annotations

import pytest

from evo.operators.edits import EditError, apply_reply, parse_reply
from evo.operators.validate import validate_child
from tests.support.replies import CASES, PARENT


def test_the_corpus_is_large_and_mixed():
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)
    assert sum(c.refused is None for c in CASES) >= 20 and sum(c.refused is not None for c in CASES) >= 8


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_reply_applies_exactly_or_is_refused_with_the_fix(case):
    def use() -> tuple[str, str]:
        parsed = parse_reply(case.reply, truncated=case.truncated)
        code = apply_reply(PARENT, parsed)
        validate_child(code, PARENT)
        return code, parsed.hypothesis

    if case.refused is not None:
        with pytest.raises(EditError) as info:
            use()
        assert case.refused in str(info.value), str(info.value)
        return
    code, hypothesis = use()
    assert code == case.expected(), "misapplied"
    assert hypothesis == case.title
