"""The one command line and the install names: ``paramgraph`` and ``python -m paramgraph`` are the
same parser, their help imports neither torch nor torch_geometric, and the installed project
takes no generic top-level name (a user's own ``models/`` and ``tasks.py`` keep working)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("paramgraph")


def _run(args, cwd, **kw):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=300,
                          **kw)


def _commands(help_text: str) -> list[str]:
    lines = help_text.split("positional arguments:")[1].split("options:")[0].splitlines()
    return [ln.split()[0] for ln in lines[2:] if ln.startswith("    ") and ln.split()]


def test_console_script_and_module_offer_the_same_commands(tmp_path):
    by_module = _run([sys.executable, "-m", "paramgraph", "--help"], tmp_path)
    by_script = _run([str(SCRIPT), "--help"], tmp_path)
    assert by_module.returncode == by_script.returncode == 0, by_module.stderr + by_script.stderr
    commands = _commands(by_module.stdout)
    assert commands == _commands(by_script.stdout)
    assert {"convert", "inspect", "restore", "zoo", "train", "eval", "baseline", "edit"} <= set(
        commands)


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["zoo", "make", "--help"],
                                  ["convert", "--help"], ["baseline", "--help"]])
def test_help_imports_neither_torch_nor_pyg(tmp_path, argv):
    probe = textwrap.dedent(f"""
        import sys
        from paramgraph.tasks.cli import main
        status = main({argv!r})
        heavy = sorted(m for m in ("torch", "torch_geometric") if m in sys.modules)
        print("HEAVY", heavy, "STATUS", status)
    """)
    out = _run([sys.executable, "-c", probe], tmp_path)
    assert "HEAVY [] STATUS 0" in out.stdout, out.stdout[-500:] + out.stderr


def test_help_control_a_command_run_does_import_torch(tmp_path):
    """Control for the test above: the probe does see torch when a command really needs it."""
    probe = textwrap.dedent("""
        import sys
        from paramgraph.tasks.cli import main
        main(["inspect", "missing.pgraph"])
        print("TORCH", "torch" in sys.modules)
    """)
    out = _run([sys.executable, "-c", probe], tmp_path)
    assert "TORCH True" in out.stdout, out.stdout + out.stderr


_ONE_GRAPH_COMMANDS = [
    ["convert", "net.pt", "--arch", "net:make", "--input-shape", "2,4", "-o", "net.pgraph"],
    ["inspect", "net.pgraph"], ["restore", "net.pgraph", "-o", "back.safetensors"],
    ["export", "net.pgraph", "-o", "net.json"],
]


def test_one_graph_commands_do_not_import_pyg(tmp_path):
    """Converting, inspecting, restoring and exporting one graph never batch it, so they start
    without torch_geometric's ~3 s import (its PyG-free PlainGraph); the restore is still exact."""
    (tmp_path / "net.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def make():
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    """))
    probe = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, ".")
        import net
        torch.save(net.make().state_dict(), "net.pt")
        from paramgraph.tasks.cli import main
        for argv in {_ONE_GRAPH_COMMANDS!r}:
            assert main(argv) == 0, argv
        from safetensors.torch import load_file
        back, orig = load_file("back.safetensors"), net.make().state_dict()
        print("EXACT", all(torch.equal(back[k], orig[k]) for k in orig) and set(back) == set(orig))
        print("PYG", "torch_geometric" in sys.modules)
        import paramgraph
        print("CONTROL", type(paramgraph.from_module(net.make(), torch.randn(2, 4))).__name__,
              "torch_geometric" in sys.modules)
    """)
    out = _run([sys.executable, "-c", probe], tmp_path)
    assert "EXACT True" in out.stdout and "PYG False" in out.stdout, out.stdout + out.stderr
    # Control: the Python API still returns the batchable PyG graph, and the probe sees PyG then.
    assert "CONTROL ParamGraph True" in out.stdout, out.stdout + out.stderr


def _user_project(root: Path) -> Path:
    """A user's directory with its own ``models/`` package and an invoke-style ``tasks.py``."""
    (root / "models").mkdir()
    (root / "models" / "__init__.py").write_text("")
    (root / "models" / "net.py").write_text(textwrap.dedent("""
        from torch import nn

        def make():
            return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    """))
    (root / "tasks.py").write_text("def build(ctx):\n    pass\n")
    return root


def test_generic_names_are_not_installed(tmp_path):
    probe = textwrap.dedent("""
        import importlib.util
        for name in ("models", "tasks"):
            print(name, importlib.util.find_spec(name) is not None)
        import paramgraph.models, paramgraph.tasks.cli
        print("ok")
    """)
    out = _run([sys.executable, "-c", probe], tmp_path)
    assert out.stdout.split() == ["models", "False", "tasks", "False", "ok"], out.stderr


def test_commands_work_beside_a_users_models_and_tasks(tmp_path):
    project = _user_project(tmp_path)
    import torch
    from torch import nn

    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    from safetensors.torch import save_file

    save_file(net.state_dict(), str(project / "net.safetensors"))
    for argv in ([str(SCRIPT), "--help"], [sys.executable, "-m", "paramgraph", "--help"],
                 [str(SCRIPT), "convert", "net.safetensors", "--arch", "models.net:make",
                  "--input-shape", "2,4", "-o", "net.pgraph"],
                 [sys.executable, "-m", "paramgraph", "inspect", "net.pgraph"]):
        out = _run(argv, project)
        assert out.returncode == 0, (argv, out.stderr)
    restored = _run([str(SCRIPT), "restore", "net.pgraph", "-o", "back.safetensors"], project)
    assert restored.returncode == 0, restored.stderr
    from safetensors.torch import load_file

    back = load_file(str(project / "back.safetensors"))
    assert all(torch.equal(back[k], v) for k, v in net.state_dict().items())


def test_arch_import_leaves_sys_path_as_it_was(tmp_path, monkeypatch):
    from paramgraph.architecture import build_architecture

    _user_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    before = list(sys.path)
    build_architecture("models.net:make")
    assert sys.path == before
    sys.modules.pop("models.net", None)
    sys.modules.pop("models", None)


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun is not installed beside this Python")
def test_torchrun_reaches_the_same_command_line_from_any_directory(tmp_path):
    project = _user_project(tmp_path)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    out = _run([torchrun, "--nproc_per_node=1", "-m", "paramgraph", "train", "--help"], project)
    assert out.returncode == 0, out.stderr[-800:]
    assert "--mode" in out.stdout


def _readme_python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


def test_readme_has_python_examples():
    assert len(_readme_python_blocks()) >= 2


@pytest.mark.parametrize("index", range(len(_readme_python_blocks())))
def test_readme_python_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_python_blocks()[index], f"README.md python block {index}", "exec"), {})


def test_command_line_and_python_defaults_agree():
    import inspect

    from paramgraph.models import MetaNet
    from paramgraph.tasks.cli import build_parser
    from paramgraph.tasks.train import TrainConfig

    args = build_parser().parse_args(["train", "--out", "r", "--task", "generalization",
                                      "--zoo", "z"])
    signature = inspect.signature(MetaNet).parameters
    cfg = TrainConfig(task="generalization", zoo="z")
    for name in ("hidden", "layers", "mode"):
        assert getattr(args, name) == signature[name].default == getattr(cfg, name), name
    # the settings a task may choose are left to the task by both, so both resolve them alike
    from paramgraph.models.defaults import TRAINING

    for name in TRAINING:
        assert getattr(args, name) is None and getattr(cfg, name) is None, name
    assert args.output_readout is None and "output_readout" not in cfg.model_kwargs
