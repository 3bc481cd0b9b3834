"""The package's house rules: the library loads none of its tools, and every call only
goes down the layers that pyproject.toml declares ([tool.importlinter]): no import
cycle, no module importing one above it.  Imports inside functions count too."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]


def test_importing_tritonnorm_loads_no_tool_and_no_matplotlib():
    code = ("import sys, tritonnorm; print([m for m in sys.modules if m == 'tritonnorm.tools' "
            "or m.startswith('tritonnorm.tools.') or m.split('.')[0] == 'matplotlib'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=os.environ, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_import_graph_holds_the_package_and_its_lazy_imports():
    """The graph the contracts read is the real one: every module of tritonnorm/, and the
    imports made inside functions (the command's entry, convert's torch.fx pass)."""
    graph = grimp.build_graph("tritonnorm", cache_dir=None)
    on_disk = {"tritonnorm." + ".".join(p.relative_to(ROOT / "tritonnorm").with_suffix("").parts)
               for p in (ROOT / "tritonnorm").rglob("*.py")}
    on_disk = {m.removesuffix(".__init__") for m in on_disk} | {"tritonnorm"}
    # tritonnorm.kernels lies outside tritonnorm/ (kernels/): in the graph only where a
    # wheel installs it inside the package.
    assert {m for m in graph.modules if not m.startswith("tritonnorm.kernels")} == on_disk
    for importer, imported in [("tritonnorm.functional", "tritonnorm.fused"),
                               ("tritonnorm.__main__", "tritonnorm.tools.cli"),
                               ("tritonnorm.convert", "tritonnorm.fuse")]:
        assert graph.direct_import_exists(importer=importer, imported=imported)


@pytest.mark.parametrize("contract", ["acyclic", "layers"])
def test_the_import_contract_holds(contract, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename="pyproject.toml", limit_to_contracts=(contract,),
                        no_cache=True, no_logo=True) == 0


def test_the_kernels_import_nothing_from_the_host_package():
    """kernels/ (installed as tritonnorm.kernels, outside the graph above under an
    editable install) is the bottom layer: triton and its own modules only."""
    for path in sorted((ROOT / "kernels").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level in (0, 1) and not (node.module or "").startswith("tritonnorm"), \
                    f"{path.name}: from {'.' * node.level}{node.module} import ..."
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("tritonnorm") for a in node.names), path.name

