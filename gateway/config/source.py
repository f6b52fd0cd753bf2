"""YAML loading that remembers where every value came from.

PyYAML's composer gives nodes with marks; we build plain Python values from them and
keep, for every key path, the file and line it was written on, so a validation error
deep in the tree can point at the exact line. Duplicate keys are errors (plain PyYAML
silently keeps the last one, which hides typos in hand-edited files).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, ConfigIssue

KeyPath = tuple[str | int, ...]

try:  # the C loader is faster; both give the same nodes
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader


@dataclass(frozen=True, slots=True)
class Origin:
    file: str
    line: int
    # The key path inside its own file, which differs from the merged path for
    # values that come from an included file.
    local_path: KeyPath


@dataclass(slots=True)
class SourceMap:
    origins: dict[KeyPath, Origin]

    def locate(self, path: KeyPath) -> Origin | None:
        """The origin of ``path``, or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            origin = self.origins.get(path[:end])
            if origin is not None:
                if end < len(path):
                    return Origin(origin.file, origin.line, origin.local_path + path[end:])
                return origin
        return None

    def graft(self, other: SourceMap, at: KeyPath, strip: KeyPath) -> None:
        """Add ``other``'s origins for paths under ``strip``, re-rooted at ``at``."""
        for path, origin in other.origins.items():
            if path[: len(strip)] == strip:
                self.origins[at + path[len(strip) :]] = origin


def format_key_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def load_yaml(path: Path, display_name: str) -> tuple[Any, SourceMap]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(display_name, None, "", f"cannot read: {exc}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigIssue(display_name, None, "", "not UTF-8 text")]) from exc
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(
            [ConfigIssue(display_name, line, "", f"invalid YAML: {problem}")]
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(display_name, None, "", f"invalid YAML: {exc}")]) from exc
    finally:
        loader.dispose()
    origins: dict[KeyPath, Origin] = {}
    if node is None:
        return {}, SourceMap(origins)
    builder = _Builder(loader, display_name, origins)
    value = builder.build(node, ())
    if builder.issues:
        raise ConfigError(builder.issues)
    return value, SourceMap(origins)


class _Builder:
    def __init__(self, loader: yaml.SafeLoader, file: str, origins: dict[KeyPath, Origin]):
        self.loader = loader
        self.file = file
        self.origins = origins
        self.issues: list[ConfigIssue] = []

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.origins[path] = Origin(self.file, node.start_mark.line + 1, path)
        if isinstance(node, yaml.MappingNode):
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = self.loader.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    key = str(key)
                if key in result:
                    self.issues.append(
                        ConfigIssue(
                            self.file,
                            key_node.start_mark.line + 1,
                            format_key_path((*path, key)),
                            "duplicate key",
                        )
                    )
                    continue
                result[key] = self.build(value_node, (*path, key))
                # Point a key's errors at the key's own line, which is what a reader
                # looks for, not at the first line of its value.
                self.origins[(*path, key)] = Origin(
                    self.file, key_node.start_mark.line + 1, (*path, key)
                )
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]
        return self.loader.construct_object(node, deep=True)
