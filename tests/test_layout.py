"""The house's rules (tuning/__init__.py): rooms import only the rooms before them, no module
imports round a circle, results code runs without Ray, trainable/ knows nothing of tuning/."""

import ast
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import script_command

REPO = Path(__file__).resolve().parent.parent
ROOMS = ["config", "results", "search", "run"]  # each may import the rooms before it
ENTRY_SCRIPTS = {"tuning.run_grid", "tuning.run_optuna", "tuning.report"}
RAY_READERS = {"tuning.results.tune_logs"}  # the results module that reads Tune's output


def modules(root: Path = REPO) -> dict[str, Path]:
    found = {}
    for folder in ("tuning", "trainable"):
        for path in (root / folder).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at its top or inside a function, by absolute name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return found


def project_graph(root: Path = REPO) -> dict[str, set[str]]:
    """Module → the project's modules it imports (a name imported from a module counts as
    that module; from a package's __init__, as the package)."""
    known = modules(root)
    graph = {}
    for name, path in known.items():
        edges = set()
        for target in imports(path):
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "tuning" and len(parts) > 1 and parts[1] in ROOMS else None


def forbidden_imports(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in graph.items():
        for target in targets:
            if module.startswith("trainable") and target.startswith("tuning"):
                wrong.append(f"{module} → {target}: trainable/ imports nothing of tuning/")
            mine, theirs = room(module), room(target)
            if mine and theirs and ROOMS.index(theirs) > ROOMS.index(mine):
                wrong.append(f"{module} → {target}: {mine} may not import {theirs}")
            if mine and target in ENTRY_SCRIPTS:
                wrong.append(f"{module} → {target}: a room imports no entry script")
    return sorted(wrong)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_round_a_circle():
    assert circles(project_graph()) == []


def test_each_room_imports_only_the_rooms_before_it():
    assert forbidden_imports(project_graph()) == []


def test_every_module_of_tuning_sits_in_a_room_or_is_an_entry_script():
    loose = [m for m in modules() if m.startswith("tuning.") and not room(m)]
    assert sorted(loose) == sorted(ENTRY_SCRIPTS)


def test_the_checks_find_a_circle_and_a_backward_import(tmp_path):
    for name, text in {
        "tuning/__init__.py": "",
        "tuning/config/__init__.py": "",
        "tuning/config/a.py": "from tuning.run.b import x\n",  # config → run: backward
        "tuning/run/__init__.py": "",
        "tuning/run/b.py": "def f():\n    import tuning.config.a\n",  # and round a circle
        "trainable/__init__.py": "",
        "trainable/c.py": "from tuning.config import a\n",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = project_graph(tmp_path)
    assert circles(graph) == [["tuning.config.a", "tuning.run.b"]]
    assert forbidden_imports(graph) == [
        "trainable.c → tuning.config.a: trainable/ imports nothing of tuning/",
        "trainable.c → tuning.config: trainable/ imports nothing of tuning/",
        "tuning.config.a → tuning.run.b: config may not import run",
    ]


def test_results_code_other_than_tunes_log_reader_imports_no_ray():
    results = [m for m in modules() if room(m) == "results" and m not in RAY_READERS]
    assert "tuning.results.report" in results
    for module in results:
        assert not {i for i in imports(modules()[module]) if i.split(".")[0] == "ray"}, module
    # And at run time: importing them (and what they import) leaves Ray unloaded.
    code = f"import sys; import {', '.join(results)}; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("folder", ["trainable"])
def test_only_the_ray_adapter_of_trainable_imports_ray(folder):
    users = {
        m for m in modules() if m.startswith(folder) and any(
            i.split(".")[0] == "ray" for i in imports(modules()[m])
        )
    }  # fmt: skip
    assert users == {"trainable.trainable"}


# A user's module named as a module of the project's packages is the user's. Both define
# `build`, which the project's `config` package has not: the wrong one fails to import it.
USER_MODULES = {
    "config.py": "from torch import nn\n\n\ndef build(num_classes):\n"
    "    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))\n",
    "search.py": "from config import build  # noqa: F401\n",
}


def run_beside_user_modules(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    for name, text in USER_MODULES.items():
        (tmp_path / name).write_text(text)
    command = script_command("tuning/run_grid.py", "--smoke", "--no-dashboard", *args)
    command["cwd"] = tmp_path  # as a user runs it, beside their own modules
    return subprocess.run(**command, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("model", ["config:build", "search:build"])
def test_a_users_module_named_like_the_projects_is_the_one_imported(tmp_path, model):
    # The config check imports the model before anything starts; a bad --name is refused
    # right after it, so no Ray is needed to see which module was imported.
    proc = run_beside_user_modules(tmp_path, "--set", f"trial.model={model}", "--name", "..")
    assert proc.returncode == 2
    assert "--name '..' must be" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_a_users_config_module_trains_in_the_trials(tmp_path):
    proc = run_beside_user_modules(
        tmp_path, "--no-report", "--results-dir", str(tmp_path / "results"), "--name", "mine",
        "--set", "trial.model=config:build",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = pq.read_table(tmp_path / "results" / "mine" / "trials.parquet").to_pylist()
    assert [t["status"] for t in trials] == ["completed", "completed"]
    assert {t["model"] for t in trials} == {"config:build"}
