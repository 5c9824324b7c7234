"""Which services publish and which consume each topic, read from their source (no service runs).

A topic counts as published by a service when one of its constants (`topics.EVENTS_RAW`, an
alias of one, or a local value built from one such as `subject = f"{JOBS.name}.{id}"`) is an
argument of a call named `publish`, `publish_many`, `publish_many_sequenced` or `OutboxEntry` (an outbox entry is
published by the service's relay); as consumed when it is an argument of `consume`, `listen`,
`pull_subscribe` or `bind` (`mosaic.platform.pull.Puller.bind`). Other mentions (streams declared, messages erased, lag read) count as neither.

A service's code also does what the platform code it names does: a service that builds a
`mosaic.platform.privacy.Participant` consumes `privacy.requested` and publishes
`privacy.receipt`, and one that runs `mosaic.platform.server.Service` writes and reads `audit`.
That is followed symbol by symbol (top-level functions and classes) through the platform.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

PUBLISH = frozenset({"publish", "publish_many", "publish_many_sequenced", "OutboxEntry"})
CONSUME = frozenset({"consume", "listen", "pull_subscribe", "bind"})
TOPICS_MODULE = "mosaic.platform.topics"
PLATFORM = "mosaic.platform"


@dataclass
class Uses:
    """Topic names a piece of code publishes and consumes, and the platform symbols it names."""

    published: set[str] = field(default_factory=set)
    consumed: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)

    def add(self, other: Uses) -> None:
        self.published |= other.published
        self.consumed |= other.consumed


class _Module:
    """One source file: its imports, its topic aliases and what each top-level symbol does."""

    def __init__(self, qualified: str, source: str, topic_names: dict[str, str]) -> None:
        self.qualified = qualified
        self.topic_names = topic_names  # constant name in mosaic.platform.topics -> topic name
        tree = ast.parse(source)
        self.imports: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    self.imports[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        self.imports[alias.asname] = alias.name
                    else:  # `import a.b` binds `a`
                        self.imports[alias.name.split(".")[0]] = alias.name.split(".")[0]
        self.aliases: dict[str, set[str]] = {}
        self.symbols: dict[str, Uses] = {}
        for node in tree.body:  # module-level aliases first: `JOBS = topics.DELIVERY_JOBS`
            if isinstance(node, ast.Assign) and (found := self._topics_in(node.value, {})):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        self.aliases[target.id] = found
        self.whole = Uses()
        for node in tree.body:
            uses = self._uses(node)
            self.whole.add(uses)
            self.whole.names |= uses.names
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.symbols[node.name] = uses

    def qualify(self, node: ast.expr) -> str | None:
        """The dotted name an expression stands for (`server.Service` -> mosaic.platform.server.Service)."""
        if isinstance(node, ast.Name):
            return self.imports.get(node.id, f"{self.qualified}.{node.id}")
        if isinstance(node, ast.Attribute) and (base := self.qualify(node.value)):
            return f"{base}.{node.attr}"
        return None

    def _topic(self, node: ast.AST, local: dict[str, set[str]]) -> set[str]:
        if isinstance(node, ast.Name) and node.id in local:
            return local[node.id]
        if isinstance(node, ast.Name) and node.id in self.aliases:
            return self.aliases[node.id]
        if isinstance(node, (ast.Name, ast.Attribute)):
            name = self.qualify(node)
            if name and name.startswith(f"{TOPICS_MODULE}."):
                constant = name.removeprefix(f"{TOPICS_MODULE}.")
                if constant in self.topic_names:
                    return {self.topic_names[constant]}
        return set()

    def _topics_in(self, node: ast.AST, local: dict[str, set[str]]) -> set[str]:
        found: set[str] = set()
        for child in ast.walk(node):
            found |= self._topic(child, local)
        return found

    def _uses(self, node: ast.AST) -> Uses:
        uses = Uses()
        local: dict[str, set[str]] = {}
        for child in ast.walk(node):  # locals built from a topic: `subject = f"{JOBS.name}.{id}"`
            if isinstance(child, ast.Assign) and (assigned := self._topics_in(child.value, {})):
                for target in child.targets:
                    if isinstance(target, ast.Name):
                        local[target.id] = assigned
        for child in ast.walk(node):
            if isinstance(child, ast.Call):
                func = child.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called in PUBLISH or called in CONSUME:
                    found: set[str] = set()
                    for argument in [*child.args, *(k.value for k in child.keywords)]:
                        found |= self._topics_in(argument, local)
                    (uses.published if called in PUBLISH else uses.consumed).update(found)
            if isinstance(child, (ast.Name, ast.Attribute)) and (name := self.qualify(child)):
                if name.startswith(f"{PLATFORM}.") and not name.startswith(f"{TOPICS_MODULE}."):
                    uses.names.add(name)
        return uses


def _modules(src: Path, topic_names: dict[str, str]) -> list[_Module]:
    modules = []
    for path in sorted(src.rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        qualified = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules.append(_Module(qualified, path.read_text(), topic_names))
    return modules


def scan(services: Path, platform_src: Path, topic_names: dict[str, str]) -> dict[str, Uses]:
    """What each service under `services/` (its `src/`) publishes and consumes, given the
    platform's source tree (`libs/mosaic-platform/src`) and the registry's constant names."""
    platform: dict[str, Uses] = {}
    for module in _modules(platform_src, topic_names):
        for name, uses in module.symbols.items():
            platform[f"{module.qualified}.{name}"] = uses
    result: dict[str, Uses] = {}
    for folder in sorted(p for p in services.iterdir() if (p / "src").is_dir()):
        total = Uses()
        for module in _modules(folder / "src", topic_names):
            total.add(module.whole)
            total.names |= module.whole.names
        _follow(total, platform)
        result[folder.name] = total
    return result


def _follow(total: Uses, platform: dict[str, Uses]) -> None:
    """Add what every platform symbol the code names does, and what the symbols those name do."""
    seen: set[str] = set()
    todo = list(total.names)
    while todo:
        name = todo.pop()
        # `server.Service.start` names the class: try the name, then its prefixes.
        while name and name not in platform:
            name = name.rpartition(".")[0]
        if not name or name in seen:
            continue
        seen.add(name)
        total.add(platform[name])
        todo.extend(platform[name].names)


def by_topic(uses: dict[str, Uses]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(producers, consumers) of each topic name, from `scan`'s answer."""
    producers: dict[str, set[str]] = defaultdict(set)
    consumers: dict[str, set[str]] = defaultdict(set)
    for service, found in uses.items():
        for topic in found.published:
            producers[topic].add(service)
        for topic in found.consumed:
            consumers[topic].add(service)
    return producers, consumers
