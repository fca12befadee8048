"""Read one YAML document once, into Python data and the line of every field path, with bounds.

libyaml (the C parser) composes the node tree when PyYAML was built with it, the pure-Python
composer otherwise; then one walk over the tree builds the data. The line of a field path is
looked up in the same tree when an error asks for it (:class:`Lines`): a valid file, which
asks for none, pays nothing for line numbers.
Aliases are weighed on the node tree before anything is expanded, so an alias bomb ("billion
laughs") is refused after composing a few hundred bytes, not after expanding billions of nodes.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

import yaml
from yaml.constructor import SafeConstructor

MAX_DEPTH: Final = 64
"""Deepest nesting of collections (a rotation file needs six levels)."""
ALIAS_ALLOWANCE: Final = 10_000
"""Aliases may add this many nodes, or as many as the file writes out, whichever is more."""

Path = tuple[Any, ...]

_STR: Final = "tag:yaml.org,2002:str"
_SEQ: Final = "tag:yaml.org,2002:seq"
_MAP: Final = "tag:yaml.org,2002:map"
_MERGE: Final = "tag:yaml.org,2002:merge"

try:  # libyaml: composes about 15 times faster than the pure-Python composer
    from yaml import CSafeLoader as FastestLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as FastestLoader  # type: ignore[assignment]

# SafeLoader's implicit resolvers by first character; SafeLoader has no path resolvers
_IMPLICIT: Final = {first: tuple(pairs) for first, pairs in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def _resolve(kind: type[yaml.Node], value: str | None, implicit: Any) -> str:
    """``BaseResolver.resolve`` for SafeLoader, without its per-call list building."""
    if kind is yaml.ScalarNode:
        if implicit[0] and value is not None:
            for tag, regexp in _IMPLICIT.get(value[:1], ()):
                if regexp.match(value):
                    return str(tag)
        return _STR
    return _SEQ if kind is yaml.SequenceNode else _MAP


def _loader_class(base: type[Any]) -> type[Any]:
    """``base`` with the three resolver calls it makes per node made cheap.

    A new class per document, so its cache of tags (most values repeat: "aws", "agent",
    a region...) lives as long as the document. SafeLoader has no path resolvers, so its
    descend/ascend calls do nothing; C builtins do nothing without a Python frame.
    """
    return type(
        f"_Lean{base.__name__}",
        (base,),
        {
            "resolve": staticmethod(functools.lru_cache(maxsize=None)(_resolve)),
            "descend_resolver": staticmethod({}.get),
            "ascend_resolver": staticmethod(tuple),
        },
    )


class DocumentError(Exception):
    """The document is not acceptable; ``line`` (1-based) is where, when known."""

    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: reading a document makes hundreds of thousands of
    objects that all stay alive, and the collector would scan them again and again for nothing
    (the larger the file, the more often: most of the time, and super-linear)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def read_document(text: str, loader: type[Any] = FastestLoader) -> tuple[Any, Lines]:
    """The Python data of the single YAML document in ``text`` and the line each path starts on.

    Raises :class:`yaml.YAMLError` for malformed YAML and :class:`DocumentError` for a document
    that is well-formed but refused: duplicate keys, aliases expanding too far, nesting too deep,
    a tag the rotation file has no use for.
    """
    composer = _loader_class(loader)(text)
    with collector_paused():
        try:
            node = composer.get_single_node()
        except RecursionError:  # the pure-Python composer recurses once per level
            raise DocumentError(None, f"nested deeper than {MAX_DEPTH} levels") from None
        finally:
            composer.dispose()
        if node is None:
            return None, Lines(None)
        return _Builder(node).build(node, 0), Lines(node)


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _check_size(root: yaml.Node) -> None:
    """Refuse a tree whose aliases would expand it beyond the allowance, or nest too deep.

    Each distinct node is weighed once (its size as expanded: itself and all it contains,
    through aliases); an alias costs nothing to compose but its anchor's whole size to build.
    """
    sizes: dict[int, tuple[int, int]] = {}  # id -> (nodes as expanded, levels below)
    on_path: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        known = sizes.get(id(node))
        if known is None:
            if id(node) in on_path:
                raise DocumentError(_line(node), "an alias refers to a collection that contains it")
            if depth > MAX_DEPTH:
                raise DocumentError(_line(node), f"nested deeper than {MAX_DEPTH} levels")
            children: list[yaml.Node] = []
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = node.value
            on_path.add(id(node))
            total, below = 1, 0
            for child in children:
                total += size(child, depth + 1)
                below = max(below, sizes[id(child)][1] + 1)
            on_path.discard(id(node))
            known = sizes[id(node)] = (total, below)
        # an alias puts a whole subtree at this depth: its levels count from here
        if depth + known[1] > MAX_DEPTH:
            raise DocumentError(_line(node), f"nested deeper than {MAX_DEPTH} levels")
        return known[0]

    expanded = size(root, 0)
    written = len(sizes)
    allowed = max(ALIAS_ALLOWANCE, written)
    if expanded - written > allowed:
        raise DocumentError(
            None,
            f"aliases expand the document from {written} to {expanded} nodes; "
            f"aliases may add at most {allowed} (the larger of {ALIAS_ALLOWANCE} and the nodes written)",
        )


class Lines:
    """The line (1-based) each field path of a document starts on, found in its node tree.

    A path is what pydantic reports: mapping keys as written, list indexes as ints. A mapping's
    field points at its key's line, a list item at the item. Each mapping is indexed the first
    time a lookup passes through it, so looking up every error of a broken file stays linear.
    """

    def __init__(self, root: yaml.Node | None) -> None:
        self._root = root
        self._fields: dict[int, dict[Any, tuple[yaml.Node, yaml.Node]]] = {}

    def get(self, path: Path) -> int | None:
        node = self._root
        if node is None:
            return None
        line = _line(node)
        for part in path:
            if isinstance(node, yaml.MappingNode):
                pair = self._children(node).get(part)
                if pair is None:
                    return None
                line, node = _line(pair[0]), pair[1]
            elif (
                isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value)
            ):
                node = node.value[part]
                line = _line(node)
            else:
                return None
        return line

    def __getitem__(self, path: Path) -> int:
        line = self.get(path)
        if line is None:
            raise KeyError(path)
        return line

    def as_dict(self) -> dict[Path, int]:
        """Every path and its line (for tests and tools: a whole walk)."""
        out: dict[Path, int] = {}
        if self._root is None:
            return out
        todo: list[tuple[Path, yaml.Node, int]] = [((), self._root, _line(self._root))]
        while todo:
            path, node, line = todo.pop()
            out[path] = line
            if isinstance(node, yaml.MappingNode):
                todo += [((*path, k), v, _line(kn)) for k, (kn, v) in self._children(node).items()]
            elif isinstance(node, yaml.SequenceNode):
                todo += [((*path, i), item, _line(item)) for i, item in enumerate(node.value)]
        return out

    def _children(self, node: yaml.MappingNode) -> dict[Any, tuple[yaml.Node, yaml.Node]]:
        found = self._fields.get(id(node))
        if found is None:
            found = {}
            merged = [pair for k, v in node.value if k.tag == _MERGE for pair in _merge_sources(v)]
            for key_node, value_node in [*reversed(merged), *(p for p in node.value if p[0].tag != _MERGE)]:
                found[key_node.value] = (key_node, value_node)  # explicit keys, then earlier sources win
            self._fields[id(node)] = found
        return found


class _Builder:
    """One walk: Python data from the nodes, refusing what a rotation file has no use for.

    The tree is only weighed (:func:`_check_size`) when the walk meets a collection a second
    time, through an alias: a file without aliases pays one set insertion per collection.
    """

    def __init__(self, root: yaml.Node) -> None:
        self._root = root
        self._seen: set[int] | None = set()
        self._constructor = SafeConstructor()
        self._scalars = SafeConstructor.yaml_constructors

    def build(self, node: yaml.Node, depth: int) -> Any:
        if node.__class__ is yaml.ScalarNode:
            return self._scalar(node)
        if depth >= MAX_DEPTH:
            raise DocumentError(_line(node), f"nested deeper than {MAX_DEPTH} levels")
        if self._seen is not None:
            if id(node) in self._seen:
                _check_size(self._root)
                self._seen = None  # weighed once and within bounds: no need to look again
            else:
                self._seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ:
                raise DocumentError(_line(node), f"the tag {node.tag!r} is not allowed here")
            return [self.build(item, depth + 1) for item in node.value]
        assert isinstance(node, yaml.MappingNode)
        if node.tag != _MAP:
            raise DocumentError(_line(node), f"the tag {node.tag!r} is not allowed here")
        return self._mapping(node, depth)

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        if node.tag == _STR:
            return node.value
        construct = self._scalars.get(node.tag)
        if construct is None or node.tag in (_SEQ, _MAP):
            raise DocumentError(_line(node), f"the tag {node.tag!r} is not allowed here")
        try:
            return construct(self._constructor, node)
        except (ValueError, OverflowError, yaml.YAMLError):
            kind = node.tag.rsplit(":", 1)[-1]
            raise DocumentError(_line(node), f"{node.value!r} is not a valid {kind}") from None

    def _key(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise DocumentError(_line(node), "a mapping key must be a plain value, not a list or a mapping")
        return self._scalar(node)

    def _mapping(self, node: yaml.MappingNode, depth: int) -> dict[Any, Any]:
        # the hot loop of a large file: plain string keys and values are taken as they are
        out: dict[Any, Any] = {}
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        for key_node, value_node in node.value:
            if key_node.__class__ is yaml.ScalarNode and key_node.tag == _STR:
                key = key_node.value
            elif key_node.tag == _MERGE:
                merged += _merge_sources(value_node)
                continue
            else:
                key = self._key(key_node)
            if key in out:
                raise self._duplicate(node, key_node, key)
            if value_node.__class__ is yaml.ScalarNode and value_node.tag == _STR:
                out[key] = value_node.value
            else:
                out[key] = self.build(value_node, depth + 1)
        # YAML merge keys (<<: *base): explicit keys win, then earlier sources over later ones
        for key_node, value_node in merged:
            key = self._key(key_node)
            if key not in out:
                out[key] = self.build(value_node, depth + 1)
        return out

    def _duplicate(self, node: yaml.MappingNode, again: yaml.Node, key: Any) -> DocumentError:
        first = next(k for k, _ in node.value if k.tag != _MERGE and self._key(k) == key)
        return DocumentError(_line(again), f"duplicate key {key!r} (first on line {_line(first)})")


def _merge_sources(node: yaml.Node) -> list[tuple[yaml.Node, yaml.Node]]:
    """The fields a merge key (``<<: *a`` or ``<<: [*a, *b]``) brings, first source first."""
    sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
    pairs: list[tuple[yaml.Node, yaml.Node]] = []
    for source in sources:
        if not isinstance(source, yaml.MappingNode):
            raise DocumentError(_line(source), "a merge key (<<) takes a mapping or a list of mappings")
        pairs += [(k, v) for k, v in source.value if k.tag != _MERGE]
    return pairs
