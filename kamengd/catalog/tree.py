"""The category tree: which category is under which, what a hidden one hides, and the moves
that keep it a tree (no loop, at most MAX_DEPTH levels). Shops have tens of categories, not
thousands: the whole tree is read in one query when a page or a rule needs it."""
from __future__ import annotations

import dataclasses

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..errors import InvalidRequest
from .models import Category

MAX_DEPTH = 3   # top level, under it, and under that (游戏 › 腾讯 › 点券)


@dataclasses.dataclass(frozen=True)
class Node:
    id: int
    name: str
    parent_id: int | None
    sort_order: int
    is_active: bool


class Tree:
    """Every category as read at one moment."""

    def __init__(self, nodes: list[Node]):
        self.nodes = {n.id: n for n in nodes}
        self.children: dict[int | None, list[Node]] = {}
        for n in sorted(nodes, key=lambda n: (n.sort_order, n.id)):
            parent = n.parent_id if n.parent_id in self.nodes else None
            self.children.setdefault(parent, []).append(n)

    def path(self, category_id: int | None) -> list[Node]:
        """The category and those above it, the top one first ([] for none or an unknown id)."""
        found, seen = [], set()
        node = self.nodes.get(category_id)
        while node is not None and node.id not in seen:   # (a loop would be a bug: never followed twice)
            seen.add(node.id)
            found.append(node)
            node = self.nodes.get(node.parent_id)
        return found[::-1]

    def ids_up(self, category_id: int | None) -> frozenset[int]:
        """The category and every one above it: a coupon for any of them is valid for its products."""
        return frozenset(n.id for n in self.path(category_id))

    def below(self, category_id: int) -> set[int]:
        """The category and every one under it."""
        found, todo = set(), [category_id]
        while todo:
            cid = todo.pop()
            if cid in found:
                continue
            found.add(cid)
            todo.extend(n.id for n in self.children.get(cid, ()))
        return found

    def height(self, category_id: int) -> int:
        """Levels from the category down to its deepest one (1: nothing under it)."""
        deepest, seen, todo = 0, set(), [(category_id, 1)]
        while todo:
            cid, depth = todo.pop()
            if cid in seen:   # (a loop would be a bug: never followed twice)
                continue
            seen.add(cid)
            deepest = max(deepest, depth)
            todo.extend((n.id, depth + 1) for n in self.children.get(cid, ()))
        return deepest

    def shown(self, category_id: int | None) -> bool:
        """In the shop: the category and every one above it shown."""
        path = self.path(category_id)
        return bool(path) and all(n.is_active for n in path)

    def shown_ids(self) -> set[int]:
        return {cid for cid in self.nodes if self.shown(cid)}

    def label(self, category_id: int | None, sep: str = " › ") -> str:
        return sep.join(n.name for n in self.path(category_id))

    def ordered(self, parent: int | None = None, depth: int = 0) -> list[tuple[Node, int]]:
        """Every category depth first, each with its depth (0: top level), for lists and choices."""
        rows = []
        for n in self.children.get(parent, ()):
            rows.append((n, depth))
            rows.extend(self.ordered(n.id, depth + 1))
        return rows


def read_tree(session: Session, *, lock: bool = False) -> Tree:
    """`lock`: for a move (MariaDB: the rows locked and read as committed, so two staff moving
    categories at once are checked one after the other and never make a loop)."""
    query = sa.select(Category.id, Category.name, Category.parent_id, Category.sort_order, Category.is_active)
    rows = session.execute(query.with_for_update() if lock else query).all()
    return Tree([Node(r.id, r.name, r.parent_id, r.sort_order, bool(r.is_active)) for r in rows])


def check_parent(tree: Tree, category_id: int | None, parent_id: int | None) -> None:
    """InvalidRequest unless `category_id` (None: a new one) can sit under `parent_id`."""
    if parent_id is None:
        return
    if parent_id not in tree.nodes:
        raise InvalidRequest("parent: category %(category_id)s does not exist", category_id=parent_id)
    if category_id is not None and parent_id in tree.below(category_id):
        raise InvalidRequest("parent: a category cannot go under itself or a category under it")
    height = tree.height(category_id) if category_id is not None else 1
    if len(tree.path(parent_id)) + height > MAX_DEPTH:
        raise InvalidRequest("parent: at most %(depth)s levels of categories", depth=MAX_DEPTH)
