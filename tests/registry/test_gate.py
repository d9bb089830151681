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
