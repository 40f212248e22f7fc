"""YAML files read safely: a mapping as written, or one line that says what is wrong with the file.

`yaml` is imported where a file is read, not at the top: the command's help and --version need none.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from seglab.errors import SeglabError

if TYPE_CHECKING:
    import yaml

# A config holds a few hundred values and a recipe a few per image; YAML aliases can repeat a value so
# that a kilobyte expands to billions of them (the "billion laughs"), which every later step would
# walk. Aliases may add at most this many values to those written out.
MAX_YAML_VALUES = 100_000


def _node_children(node: yaml.Node) -> list:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return node.value if isinstance(node, yaml.SequenceNode) else []


def _written_size(root: yaml.Node) -> int:
    """How many distinct nodes the document writes out (each alias's target once)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen.add(id(node))
            stack.extend(_node_children(node))
    return len(seen)


def _expanded_size(root: yaml.Node, path: Path) -> int:
    """How many values the node graph `root` holds once its aliases are expanded, counted without
    expanding it (each node's count once); SeglabError when aliases add more than MAX_YAML_VALUES
    to what is written, or for an alias cycle."""
    limit = _written_size(root) + MAX_YAML_VALUES
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        children = _node_children(node)
        if children_done:
            open_nodes.discard(id(node))
            sizes[id(node)] = min(1 + sum(sizes[id(child)] for child in children), limit + 1)
            if sizes[id(node)] > limit:
                raise SeglabError(f"config file '{path}' expands to more than {MAX_YAML_VALUES} values (YAML aliases "
                                  "repeating values, beyond those written out): write the config out without nested "
                                  "aliases")
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_nodes:
            raise SeglabError(f"config file '{path}' holds a value that contains itself (a YAML alias cycle): "
                              "write the config out without it")
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)
    return sizes[id(root)]


def _load_yaml(text: str, path: Path):
    """yaml.safe_load(text) (libyaml's parser where PyYAML has it: a recipe of 30,000 pairs loads
    in a second), refusing documents whose aliases expand past MAX_YAML_VALUES."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, path)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict:
    """The mapping of a YAML config file, as written (SeglabError for unreadable files)."""
    import yaml  # here, not at the top: the command's help and --version need no YAML

    path = Path(path)
    try:
        values = _load_yaml(path.read_text(), path)
    except RecursionError:
        raise SeglabError(f"config file '{path}' nests values too deeply to read: write it flatter") from None
    except yaml.YAMLError as error:
        if "maximum nesting depth" in str(error):  # libyaml's parser stops where Python's would recurse
            raise SeglabError(f"config file '{path}' nests values too deeply to read: write it flatter") from None
        raise SeglabError(f"config file '{path}' is not valid YAML ({error})".replace("\n", " ")) from None
    except FileNotFoundError:
        raise SeglabError(f"config file '{path}' does not exist") from None
    except IsADirectoryError:
        raise SeglabError(f"config '{path}' is a folder: give a YAML file") from None
    except UnicodeDecodeError:
        raise SeglabError(f"config file '{path}' is not text: give a YAML file") from None
    if values is not None and not isinstance(values, dict):
        raise SeglabError(f"config file '{path}' must hold a mapping with data/model/train sections")
    return values or {}
