"""The repository's ``kernels/`` folder is ``fastalign.kernels``; started in a clone, Python also
sees it as a top-level ``kernels``, the name of Hugging Face's distribution that transformers
imports. That import must reach Hugging Face's package, or ``import transformers`` breaks."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _installed_elsewhere() -> bool:
    spec = importlib.machinery.PathFinder.find_spec(
        "kernels", [entry for entry in sys.path if Path(entry or ".").resolve() != ROOT])
    return spec is not None


def test_fastalign_kernels_is_this_folder():
    import fastalign.kernels

    assert Path(fastalign.kernels.__file__).resolve() == ROOT / "kernels" / "__init__.py"


@pytest.mark.skipif(not _installed_elsewhere(), reason="Hugging Face's kernels distribution is not installed")
def test_top_level_kernels_from_a_clone_is_hugging_faces():
    code = ("import kernels, fastalign.kernels, transformers.modeling_utils; from pathlib import Path; "
            "print(Path(kernels.__file__).resolve()); print(Path(fastalign.kernels.__file__).resolve())")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    top_level, ours = result.stdout.split()
    assert Path(top_level) != ROOT / "kernels" / "__init__.py" and Path(ours) == ROOT / "kernels" / "__init__.py"
