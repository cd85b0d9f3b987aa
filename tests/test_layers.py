"""The shape of the library stays: the import contracts of pyproject.toml hold (floors run one way; the library
never imports the methods but in its composition root), there is no import cycle anywhere, and no method is named
outside the method registry, its own module, its YAML and the tests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_the_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_no_import_cycle_anywhere():
    import grimp

    g = grimp.build_graph("harness", "pipelines", "hydra_plugins")
    # modules only (a package's __init__ importing its own children is no cycle of the code's shape)
    ours = {
        m for m in g.modules if m.split(".")[0] in ("harness", "pipelines") or m.startswith("hydra_plugins.harness_")
    }
    graph = {
        m: {i for i in g.find_modules_directly_imported_by(m) if i in ours and not m.startswith(i + ".")} for m in ours
    }
    assert _cycles(graph) == []


def test_cycles_are_found():
    """(the cycle finder itself, so the test above cannot pass by finding nothing)"""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _method_names() -> list[str]:
    from pipelines.registry import METHODS

    # The stages' names are also the config sections (`sft.epochs`, `reward_model.batch_size`): they may appear.
    return [m for m in METHODS if m not in ("sft", "preferences", "reward_model")]


def _name_pattern() -> re.Pattern:
    """A quoted method name, as code would write it to look a method up by name."""
    return re.compile(r"""["'](""" + "|".join(map(re.escape, _method_names())) + r""")["']""")


def test_no_method_is_named_outside_the_registry_its_module_and_its_yaml():
    """The library (harness/) and the study sweeper ask the registry; a method's name as a string literal there would
    be a second place for one of its facts."""
    pattern = _name_pattern()
    found = []
    for path in sorted([*ROOT.glob("harness/**/*.py"), *ROOT.glob("hydra_plugins/**/*.py")]):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert found == []


def test_the_name_check_sees_a_method_name():
    pattern = _name_pattern()
    assert pattern.search('if m == "dpo":') and not pattern.search("a dpo loss")
