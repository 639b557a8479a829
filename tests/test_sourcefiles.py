"""sslseg.sourcefiles: the package files a stage runs, from its imports (stdlib-only, by parsing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sslseg.sourcefiles import module_files

ROOT = Path(__file__).resolve().parents[1]


def tree(root: Path, files: dict[str, str]) -> Path:
    """Write a fake package tree under root; every folder of sslseg/ gets an __init__.py."""
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    for d in [root / "sslseg", *(root / "sslseg").rglob("*")]:
        if d.is_dir() and not (d / "__init__.py").exists() and d.name != "ns":
            (d / "__init__.py").write_text("")
    return root


def test_absolute_imports_and_package_inits(tmp_path):
    tree(tmp_path, {
        "sslseg/stages/train.py": "import os\nimport sslseg.models.vit\nfrom sslseg.io import write\n",
        "sslseg/models/vit.py": "import torch\n",
        "sslseg/models/heads.py": "",
        "sslseg/io.py": "import json\n",
        "sslseg/unused.py": "",
    })
    assert module_files(["sslseg.stages.train"], tmp_path) == [
        "sslseg/__init__.py",
        "sslseg/io.py",
        "sslseg/models/__init__.py",
        "sslseg/models/vit.py",
        "sslseg/stages/__init__.py",
        "sslseg/stages/train.py",
    ]
    # The root may be a str; a package itself is a module; several modules are a union.
    assert module_files(["sslseg.models"], str(tmp_path)) == ["sslseg/__init__.py", "sslseg/models/__init__.py"]
    assert module_files(["sslseg.io", "sslseg.unused"], tmp_path) == [
        "sslseg/__init__.py", "sslseg/io.py", "sslseg/unused.py"
    ]
    assert module_files([], tmp_path) == []


def test_imports_inside_functions_try_and_type_checking_count(tmp_path):
    tree(tmp_path, {
        "sslseg/cli.py": """
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from sslseg.typed import T
            try:
                import sslseg.optional
            except ImportError:
                pass

            def main(cmd):
                if cmd == "pack":
                    from sslseg.data.pack import pack
                    return pack
                class Lazy:
                    def run(self):
                        import sslseg.deep
            """,
        "sslseg/typed.py": "",
        "sslseg/optional.py": "",
        "sslseg/data/pack.py": "",
        "sslseg/deep.py": "",
    })
    assert module_files(["sslseg.cli"], tmp_path) == [
        "sslseg/__init__.py",
        "sslseg/cli.py",
        "sslseg/data/__init__.py",
        "sslseg/data/pack.py",
        "sslseg/deep.py",
        "sslseg/optional.py",
        "sslseg/typed.py",
    ]


def test_relative_imports(tmp_path):
    tree(tmp_path, {
        "sslseg/__init__.py": "from . import io\n",
        "sslseg/io.py": "",
        "sslseg/data/__init__.py": "from .sources import Record\nfrom .. import metrics\n",
        "sslseg/data/sources.py": "",
        "sslseg/data/pack.py": "from . import splits\nfrom .augment import flip\nfrom ..models.vit import encode\n",
        "sslseg/data/splits.py": "",
        "sslseg/data/augment.py": "",
        "sslseg/metrics.py": "",
        "sslseg/models/vit.py": "from ... import beyond  # beyond the top-level package: an ImportError, ignored\n",
        "sslseg/models/heads.py": "",
    })
    assert module_files(["sslseg.data.pack"], tmp_path) == [
        "sslseg/__init__.py",
        "sslseg/data/__init__.py",
        "sslseg/data/augment.py",
        "sslseg/data/pack.py",
        "sslseg/data/sources.py",
        "sslseg/data/splits.py",
        "sslseg/io.py",
        "sslseg/metrics.py",
        "sslseg/models/__init__.py",
        "sslseg/models/vit.py",
    ]


def test_from_package_import_submodule_versus_attribute(tmp_path):
    tree(tmp_path, {
        "sslseg/stage.py": "from sslseg.objectives import simmim, Segment\nfrom sslseg.models import heads\n",
        "sslseg/objectives/__init__.py": "Segment = object\n",
        "sslseg/objectives/simmim.py": "",
        "sslseg/objectives/segment.py": "",  # only the attribute Segment is imported, not this
        "sslseg/models/heads/__init__.py": "",  # a subpackage imported by name
        "sslseg/models/heads/pixel.py": "",
        "sslseg/star.py": "from sslseg.objectives import *\nfrom sslseg.io import UserError\n",
        "sslseg/io.py": "",
    })
    assert module_files(["sslseg.stage"], tmp_path) == [
        "sslseg/__init__.py",
        "sslseg/models/__init__.py",
        "sslseg/models/heads/__init__.py",
        "sslseg/objectives/__init__.py",
        "sslseg/objectives/simmim.py",
        "sslseg/stage.py",
    ]
    assert module_files(["sslseg.star"], tmp_path) == [
        "sslseg/__init__.py", "sslseg/io.py", "sslseg/objectives/__init__.py", "sslseg/star.py"
    ]


def test_package_wins_over_module_and_namespace_packages(tmp_path):
    tree(tmp_path, {
        "sslseg/a.py": "",  # shadowed by the package a/, as Python resolves it
        "sslseg/a/__init__.py": "",
        "sslseg/ns/mod.py": "",  # a folder without __init__.py: a namespace package
    })
    assert module_files(["sslseg.a"], tmp_path) == ["sslseg/__init__.py", "sslseg/a/__init__.py"]
    assert module_files(["sslseg.ns.mod"], tmp_path) == ["sslseg/__init__.py", "sslseg/ns/mod.py"]


def test_cycles_terminate(tmp_path):
    tree(tmp_path, {
        "sslseg/__init__.py": "import sslseg.a\n",
        "sslseg/a.py": "from sslseg import b\n",
        "sslseg/b.py": "from . import a\nimport sslseg.b\n",
    })
    want = ["sslseg/__init__.py", "sslseg/a.py", "sslseg/b.py"]
    assert module_files(["sslseg.b"], tmp_path) == want
    assert module_files(["sslseg"], tmp_path) == want


def test_imports_outside_the_package_are_ignored(tmp_path):
    tree(tmp_path, {
        "sslseg/x.py": "import numpy as np\nimport sslseg_extra\nfrom os import path\nimport torch.nn\n",
        "sslseg_extra.py": "",  # beside sslseg/, sharing its prefix: not part of it
        "numpy/__init__.py": "",
    })
    assert module_files(["sslseg.x"], tmp_path) == ["sslseg/__init__.py", "sslseg/x.py"]


def test_literal_import_module_counts_but_dynamic_names_are_the_callers(tmp_path):
    tree(tmp_path, {
        "sslseg/x.py": """
            import importlib
            simmim = importlib.import_module("sslseg.objectives.simmim")

            def objective(name):
                return importlib.import_module(f"sslseg.objectives.{name}")
            """,
        "sslseg/objectives/simmim.py": "",
        "sslseg/objectives/segment.py": "",
    })
    assert module_files(["sslseg.x"], tmp_path) == [
        "sslseg/__init__.py", "sslseg/objectives/__init__.py", "sslseg/objectives/simmim.py", "sslseg/x.py"
    ]
    assert "sslseg/objectives/segment.py" in module_files(["sslseg.x", "sslseg.objectives.segment"], tmp_path)


@pytest.mark.parametrize("name", ["sslseg.objectivs.simmim", "sslseg.nope", "numpy", "sslseg.", "sslseg..io", ""])
def test_unknown_module_is_an_error_naming_it(tmp_path, name):
    tree(tmp_path, {"sslseg/objectives/simmim.py": "", "sslseg/io.py": ""})
    with pytest.raises(ValueError, match=repr(name).replace(".", r"\.")):
        module_files(["sslseg.io", name], tmp_path)


def test_no_package_under_root_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="'sslseg'"):
        module_files(["sslseg"], tmp_path)


def test_broken_import_in_the_source_is_not_an_error(tmp_path):
    tree(tmp_path, {"sslseg/x.py": "import sslseg.gone.deeper\nfrom sslseg.io import missing\n", "sslseg/io.py": ""})
    assert module_files(["sslseg.x"], tmp_path) == ["sslseg/__init__.py", "sslseg/io.py", "sslseg/x.py"]


def test_an_edited_file_is_parsed_again(tmp_path):
    tree(tmp_path, {"sslseg/x.py": "import sslseg.a\n", "sslseg/a.py": "", "sslseg/b.py": ""})
    assert module_files(["sslseg.x"], tmp_path) == ["sslseg/__init__.py", "sslseg/a.py", "sslseg/x.py"]
    x = tmp_path / "sslseg" / "x.py"
    x.write_text("import sslseg.b\n")  # same size: the cache must see the new mtime
    st = x.stat()
    os.utime(x, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert module_files(["sslseg.x"], tmp_path) == ["sslseg/__init__.py", "sslseg/b.py", "sslseg/x.py"]


def test_a_long_chain_of_imports_resolves_whole(tmp_path):
    files = {}
    for i in range(60):  # each module imports the next two, at module level and in a function
        body = "\n".join(f"    x{k} = {k} * {k}" for k in range(40))
        files[f"sslseg/p{i % 6}/m{i}.py"] = (
            f"import os\nfrom sslseg.p{(i + 1) % 6} import m{(i + 1) % 60}\n"
            f"def f():\n    import sslseg.p{(i + 2) % 6}.m{(i + 2) % 60}\n{body}\n"
        )
    tree(tmp_path, files)
    got = module_files(["sslseg.p0.m0"], tmp_path)
    assert len(got) == 60 + 6 + 1  # every module, every subpackage __init__, the package __init__


def test_real_package_pack():
    got = module_files(["sslseg.data.pack"], ROOT)
    for f in ["sslseg/data/pack.py", "sslseg/data/sources.py", "sslseg/io.py",
              "sslseg/__init__.py", "sslseg/data/__init__.py"]:
        assert f in got
    assert got == sorted(got) and all((ROOT / f).is_file() for f in got)


@pytest.mark.parametrize("module", ["sslseg", "sslseg.sourcefiles", "sslseg.sizes"])
def test_importing_needs_only_the_standard_library(module):
    """As in Snakemake's own environment: no site-packages at all (-I -S), and nothing new but stdlib."""
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(ROOT)!r})
        before = set(sys.modules)
        import {module}
        new = sorted({{m.split(".")[0] for m in set(sys.modules) - before}})
        files = []
        if {module!r} == "sslseg.sourcefiles":
            files = sslseg.sourcefiles.module_files(["sslseg.data.pack"], {str(ROOT)!r})
        print(json.dumps({{"new": new, "files": files}}))
        """)
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    assert [m for m in got["new"] if m not in sys.stdlib_module_names and m != "sslseg"] == []
    if module == "sslseg.sourcefiles":
        assert "sslseg/data/pack.py" in got["files"]


def test_how_a_job_runs_is_not_code_of_its_stage():
    """The warm-start hand-off and the GPU claim sit in `python -m sslseg` itself (cli imports them)
    but cannot change a result: editing them must rerun no stage, as a runtime setting does not."""
    files = module_files(["sslseg.stages.train", "sslseg.__main__"], ROOT)
    assert "sslseg/cli.py" in files and "sslseg/train.py" in files
    assert "sslseg/warm.py" not in files and "sslseg/gpus.py" not in files
    assert "sslseg/sourcefiles.py" not in files  # (a training stage imports it to hash its own code)
