"""The layout rules of design.md: a model family's configuration and modeling files import only their siblings (so
that a saved directory carries all its code), and the pipeline's modules import nothing of st_ar_hf at module level
(a remote-code directory holds copies of them)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAMILY_FOLDERS = sorted(path for path in (ROOT / "src" / "st_ar_hf" / "models").iterdir()
                        if path.is_dir() and path.name != "__pycache__")
MODEL_FILES = [path for folder in FAMILY_FOLDERS for path in sorted(folder.glob("*.py"))
               if path.name.startswith(("configuration_", "modeling_"))]
PIPELINE_FILES = sorted((ROOT / "pipelines").glob("*.py"))


def outside_imports(nodes, folder: Path) -> list[str]:
    """The imports among `nodes` that reach beyond `folder`: relative imports with more than one dot or of a module
    that is not a file of the folder, and absolute imports of st_ar_hf."""
    siblings = {path.stem for path in folder.glob("*.py")}
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level > 1 or (node.module or "").split(".")[0] not in siblings:
                found.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "st_ar_hf":
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] == "st_ar_hf"]
    return found


def test_every_family_folder_has_model_files():
    assert FAMILY_FOLDERS
    assert all(any(path.parent == folder for path in MODEL_FILES) for folder in FAMILY_FOLDERS)


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_model_files_import_only_their_siblings(path):
    assert outside_imports(ast.walk(ast.parse(path.read_text())), path.parent) == []


@pytest.mark.parametrize("path", PIPELINE_FILES, ids=lambda path: path.name)
def test_pipeline_modules_import_only_their_siblings_at_module_level(path):
    """The pipeline reaches st_ar_hf's cards and Hub upload inside functions, guarded, so module level is the rule."""
    assert outside_imports(ast.parse(path.read_text()).body, path.parent) == []


def test_the_rule_catches_outside_imports(tmp_path):
    (tmp_path / "configuration_x.py").write_text("X = 1\n")
    code = "from .configuration_x import X\nfrom ..conversion import f\nimport st_ar_hf.hub\nfrom .missing import Y\n"
    assert outside_imports(ast.walk(ast.parse(code)), tmp_path) == ["..conversion", "st_ar_hf.hub", ".missing"]
