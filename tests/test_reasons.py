"""Reason categories: the tree, its file format and which commands must name one (pure)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from realtime.errors import BadRequest
from realtime.reasons import ReasonPolicy, ReasonsError
from realtime.state.model import Action


def test_the_default_tree_follows_tao_and_accepts_only_leaves() -> None:
    """Environment, Examinee, Proctor, Technical, Other; a category with subcategories needs
    one of them, one without is a leaf itself."""
    policy = ReasonPolicy()
    tops = [c["id"] for c in policy.to_dict()["categories"]]
    assert tops == ["environment", "examinee", "proctor", "technical", "other"]
    assert policy.check("technical/network") == "technical/network"
    assert policy.check("other") == "other"
    for bad in ("technical", "technical/nope", "phone", "", 7, None, "x" * 200):
        with pytest.raises(BadRequest):
            policy.check(bad)


def test_required_categories_are_enforced_per_action() -> None:
    """An action listed as required needs a known reason_category; others only a known one."""
    policy = ReasonPolicy.load(required=["pause", "terminate"])
    assert policy.to_dict()["required"] == ["pause", "terminate"]
    with pytest.raises(BadRequest, match="pause needs a 'reason_category'"):
        policy.check_command(Action.PAUSE, {"reason": "noise"})
    policy.check_command(Action.PAUSE, {"reason_category": "environment/noise"})
    policy.check_command(Action.LOCK, {})
    with pytest.raises(BadRequest, match="unknown reason_category"):
        policy.check_command(Action.LOCK, {"reason_category": "nope"})


def test_a_categories_file_replaces_the_tree(tmp_path: Path) -> None:
    """A deployment's JSON file is the whole tree; mistakes in it refuse to load."""
    path = tmp_path / "reasons.json"
    path.write_text(json.dumps({"categories": [
        {"id": "hall", "label": "Hall", "categories": [{"id": "heat", "label": "Too hot"}]},
        {"id": "other", "label": "Other"},
    ]}))
    policy = ReasonPolicy.load(str(path))
    assert policy.leaves == {"hall/heat", "other"}
    for broken in ({"categories": []}, {"categories": [{"id": "Bad Id"}]},
                   {"categories": [{"id": "a", "categories": [{"id": "b", "categories": [
                       {"id": "c"}]}]}]},
                   {"categories": [{"id": "a"}, {"id": "a"}]}):
        path.write_text(json.dumps(broken))
        with pytest.raises(ReasonsError):
            ReasonPolicy.load(str(path))
    with pytest.raises(ReasonsError):
        ReasonPolicy.load(str(tmp_path / "missing.json"))
    with pytest.raises(ReasonsError, match="notice"):
        ReasonPolicy.load(required=["notice"])
