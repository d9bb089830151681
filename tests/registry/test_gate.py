"""The gate's rules, by hand."""

from __future__ import annotations

import pytest

from eyeops.recipes import GateSpec
from eyeops.registry import decide


@pytest.mark.parametrize(
    ("gate", "metrics", "champion", "passed", "reason"),
    [
        (GateSpec(), {"macro_auc": 0.7}, None, True, "no champion yet"),
        (GateSpec(min_value=0.8), {"macro_auc": 0.7}, None, False, "misses min_value >= 0.8000"),
        (GateSpec(), {"macro_auc": 0.80}, 0.80, False, "no improvement"),
        (GateSpec(), {"macro_auc": 0.81}, 0.80, True, "improves by 0.0100"),
        (GateSpec(min_margin=0.05), {"macro_auc": 0.84}, 0.80, False, "below min_margin 0.0500"),
        (GateSpec(min_margin=0.05), {"macro_auc": 0.85}, 0.80, True, "improves by 0.0500"),  # float-safe edge
        (
            GateSpec(floors={"eye/OD/macro_auc": 0.7}),
            {"macro_auc": 0.9, "eye/OD/macro_auc": 0.6},
            None,
            False,
            "floor eye/OD/macro_auc=0.6000 misses >= 0.7000",
        ),
        (
            GateSpec(floors={"modality/oct/macro_auc": 0.7}),
            {"macro_auc": 0.9},
            None,
            False,
            "cannot be checked",
        ),
        (GateSpec(higher_is_better=False), {"macro_auc": 0.2}, 0.3, True, "improves by 0.1000"),
        (GateSpec(higher_is_better=False, min_value=0.1), {"macro_auc": 0.2}, None, False, "<= 0.1000"),
        (GateSpec(), {"f1": 0.9}, None, False, "'macro_auc' missing from the evaluation (have: f1)"),
    ],
)
def test_gate_rules(gate, metrics, champion, passed, reason):
    decision = decide(
        gate, "macro_auc", metrics, champion_value=champion, champion_version=1 if champion else None
    )
    assert decision.passed is passed
    assert reason in decision.reason


@pytest.mark.parametrize(("n", "detail"), [(3, "short"), (40, "x" * 400), (400, "x" * 400)])
def test_checks_tag_stays_valid_json_within_the_tag_limit(n, detail):
    import json

    from eyeops.registry.gate import GateCheck, GateDecision
    from eyeops.registry.mlflow_registry import _TAG_MAX, _checks_tag

    checks = [GateCheck(name="floor", passed=i % 2 == 0, detail=detail, reference=0.5) for i in range(n)]
    tag = _checks_tag(GateDecision(passed=False, reason="r", metric="m", value=0.4, checks=checks))
    parsed = json.loads(tag)
    assert len(tag) <= _TAG_MAX
    if n == 3:  # fits: every check whole
        assert parsed == [c.model_dump(exclude_none=True) for c in checks]
    else:  # the details go first, then the last checks give way to a count of them
        kept = [c for c in parsed if "omitted" not in c]
        assert all("detail" not in c and c["reference"] == 0.5 for c in kept)
        assert len(kept) + parsed[-1].get("omitted", 0) == n
        assert (n == 40) == ("omitted" not in parsed[-1])
