"""Reason categories: the tree staff pick from when they report an irregularity or give the
reason of a command, and which commands must name one. Pure data and validation.

A category is named by its path: `"technical/network"`, or `"other"` for a category without
subcategories. Only leaves are accepted (a category that has subcategories needs one of them),
so reports can be counted per leaf. The default tree follows TAO's proctoring categories
(Environment, Examinee, Proctor/Staff, Technical, Other); a deployment replaces it with a JSON
file named by `REALTIME_REASON_CATEGORIES_FILE`:

    {"categories": [{"id": "technical", "label": "Technical",
                     "categories": [{"id": "network", "label": "Network"}]},
                    {"id": "other", "label": "Other"}]}
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from realtime.errors import BadRequest
from realtime.state.model import Action

MAX_CATEGORY_LENGTH = 128
_ID = re.compile(r"^[a-z0-9_]{1,40}$")

# Actions whose reason may be required to carry a category (`REALTIME_REASON_CATEGORY_REQUIRED`).
CATEGORISED_ACTIONS = frozenset(
    {Action.PAUSE, Action.TERMINATE, Action.UNLOCK, Action.REOPEN, Action.LOCK, Action.RESUME,
     Action.REDUCE, Action.EXTEND}
)


class ReasonsError(ValueError):
    """A categories file or setting that cannot work; the server refuses to start."""


@dataclass(frozen=True, slots=True)
class Category:
    id: str
    label: str
    children: tuple[Category, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "label": self.label}
        if self.children:
            out["categories"] = [c.to_dict() for c in self.children]
        return out


def _tree(spec: list[tuple[str, str, list[tuple[str, str]]]]) -> tuple[Category, ...]:
    return tuple(
        Category(cid, label, tuple(Category(sid, slabel) for sid, slabel in subs))
        for cid, label, subs in spec
    )


DEFAULT_CATEGORIES = _tree([
    ("environment", "Environment", [
        ("comfort", "Comfort"), ("disturbance", "Disturbance"), ("noise", "Noise"),
        ("power_outage", "Power outage"), ("weather", "Weather"),
    ]),
    ("examinee", "Examinee", [
        ("behaviour", "Behaviour"), ("unauthorized_material", "Unauthorized material"),
        ("communication", "Communication with others"), ("left_room", "Left the room"),
        ("complaint", "Complaint"), ("identity", "ID / authorization"), ("illness", "Illness"),
        ("late", "Late"), ("navigation", "Navigation"), ("no_show", "No show"),
    ]),
    ("proctor", "Proctor / staff", [
        ("behaviour", "Behaviour"), ("compliance", "Compliance"), ("error", "Error"),
        ("late", "Late"), ("no_show", "No show"),
    ]),
    ("technical", "Technical", [
        ("freezing", "Freezing"), ("launching", "Launching"), ("network", "Network"),
        ("printing", "Printing"), ("workstation", "Testing workstation"),
    ]),
    ("other", "Other", []),
])


@dataclass(slots=True)
class ReasonPolicy:
    """The category tree and the actions whose reason must name a category of it."""

    categories: tuple[Category, ...] = DEFAULT_CATEGORIES
    required: frozenset[Action] = frozenset()
    _leaves: frozenset[str] = field(default=frozenset(), init=False)

    def __post_init__(self) -> None:
        leaves: set[str] = set()
        for top in self.categories:
            if top.children:
                leaves.update(f"{top.id}/{sub.id}" for sub in top.children)
            else:
                leaves.add(top.id)
        self._leaves = frozenset(leaves)

    @classmethod
    def load(cls, path: str = "", required: Iterable[str] = ()) -> ReasonPolicy:
        """The default tree, or the one in the JSON file at `path`; ReasonsError if either
        the file or a required action is not usable."""
        categories = DEFAULT_CATEGORIES
        if path:
            try:
                raw = json.loads(Path(path).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ReasonsError(f"cannot read reason categories file {path}: {exc}") from exc
            categories = parse_categories(raw.get("categories") if isinstance(raw, dict) else None)
        actions: set[Action] = set()
        for name in required:
            try:
                action = Action(name)
            except ValueError:
                action = None
            if action is None or action not in CATEGORISED_ACTIONS:
                raise ReasonsError(
                    f"REALTIME_REASON_CATEGORY_REQUIRED: {name!r} is not one of "
                    f"{sorted(a.value for a in CATEGORISED_ACTIONS)}"
                )
            actions.add(action)
        return cls(categories, frozenset(actions))

    @property
    def leaves(self) -> frozenset[str]:
        return self._leaves

    def check(self, category: Any, what: str = "category") -> str:
        """The category if it names a leaf of the tree; BadRequest naming the choices if not."""
        if not isinstance(category, str) or not 1 <= len(category) <= MAX_CATEGORY_LENGTH:
            raise BadRequest(f"'{what}' must be a category path such as 'technical/network'")
        if category not in self._leaves:
            raise BadRequest(
                f"unknown {what} {category!r}; expected one of {sorted(self._leaves)} "
                "(GET /api/v1/reason-categories)"
            )
        return category

    def check_command(self, action: Action, params: dict[str, Any]) -> None:
        """A command's `reason_category`: known if given, present if the action requires one."""
        category = params.get("reason_category")
        if category is not None:
            self.check(category, "reason_category")
        elif action in self.required:
            raise BadRequest(
                f"{action.value} needs a 'reason_category' in this deployment "
                "(GET /api/v1/reason-categories)"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "categories": [c.to_dict() for c in self.categories],
            "required": sorted(a.value for a in self.required),
        }


def parse_categories(raw: Any) -> tuple[Category, ...]:
    """A category tree from JSON (two levels at most); ReasonsError if it is not one."""
    if not isinstance(raw, list) or not raw:
        raise ReasonsError("'categories' must be a non-empty list of {id, label, categories?}")

    def one(item: Any, depth: int) -> Category:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise ReasonsError(f"each category needs an 'id' and a 'label': {item!r}")
        cid = item["id"]
        if not _ID.match(cid):
            raise ReasonsError(f"category id {cid!r}: use 1..40 of a-z, 0-9, '_'")
        label = item.get("label", cid)
        if not isinstance(label, str) or not label.strip():
            raise ReasonsError(f"category {cid!r}: 'label' must be a non-empty string")
        subs = item.get("categories") or []
        if subs and depth > 0:
            raise ReasonsError(f"category {cid!r}: subcategories have no subcategories")
        if not isinstance(subs, list):
            raise ReasonsError(f"category {cid!r}: 'categories' must be a list")
        children = tuple(one(sub, depth + 1) for sub in subs)
        if len({c.id for c in children}) != len(children):
            raise ReasonsError(f"category {cid!r}: subcategory ids repeat")
        return Category(cid, label.strip(), children)

    tree = tuple(one(item, 0) for item in raw)
    if len({c.id for c in tree}) != len(tree):
        raise ReasonsError("category ids repeat")
    return tree
