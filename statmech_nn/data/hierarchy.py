"""The superclass x subclass label hierarchy of the procedural datasets (image and text).

Class ``c`` is subclass ``c % num_sub`` of superclass ``c // num_sub``: the ground truth that
clusters of single-node labels are compared against.
"""

from __future__ import annotations


class LabelHierarchy:
    """Mixin for a config with ``num_super`` superclasses of ``num_sub`` subclasses each."""

    num_super: int
    num_sub: int

    @property
    def num_classes(self) -> int:
        return self.num_super * self.num_sub

    def class_names(self) -> list[str]:
        """``s{superclass:02d}_c{subclass}`` for every class, in class order."""
        return [f"s{s:02d}_c{k}" for s in range(self.num_super) for k in range(self.num_sub)]

    def superclass(self) -> list[int]:
        """The superclass of every class, in class order."""
        return [c // self.num_sub for c in range(self.num_classes)]
