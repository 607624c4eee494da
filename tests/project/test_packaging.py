"""The package as users get it: imported from the repository root, and built into a wheel."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

# Each test builds a wheel or starts fresh interpreters: seconds each, out of the fast loop.
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO_ROOT / "src" / "lookahead_cache"


def run_python(code: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300, env={**_env(), **env}
    )


def _env() -> dict:
    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def test_import_from_repository_root_does_not_shadow_installed_packages():
    # `python -c` puts the working directory first on sys.path, as `python -m pytest` and a notebook there do.
    code = (
        "import sys, importlib.util, lookahead_cache, transformers\n"
        "from lookahead_cache import LookaheadCache\n"
        "from lookahead_cache.kernels.attention_scores import attention_scores\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "print(sys.path[0] == '', spec and spec.origin)\n"
    )
    result = run_python(code, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    on_path, origin = result.stdout.split()
    assert on_path == "True"
    # Whatever `kernels` resolves to (Hugging Face's package, which transformers >= 5.25 imports), it is not ours.
    assert origin == "None" or not origin.startswith(str(REPO_ROOT))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(REPO_ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (path,) = out.glob("lookahead_cache-*.whl")
    return path


def test_wheel_holds_every_module_kernel_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "lookahead_cache/" + path.relative_to(PACKAGE_DIR).as_posix()
        for path in PACKAGE_DIR.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    expected |= {f"lookahead_cache/hub_cards/{path.name}" for path in (REPO_ROOT / "hub_cards").glob("*.md")}
    assert expected - names == set()
    assert "lookahead_cache/kernels/attention_scores.py" in names
    assert "lookahead_cache/kernels/varlen_decode.py" in names
    assert not any(name.startswith(("kernels/", "tests/", "src/")) for name in names)


def test_wheel_imports_its_kernels_and_runs_a_scorer(wheel, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = (
        "import torch, lookahead_cache\n"
        "from lookahead_cache.kernels.attention_scores import attention_scores\n"
        "from lookahead_cache.default_model import DEFAULT_ADAPTER_DIR\n"
        "print(lookahead_cache.__file__)\n"
        "print(attention_scores(torch.randn(1, 2, 3, 4), torch.randn(1, 1, 5, 4), scaling=0.5).sum().item())\n"
        "print(sorted(p.name for p in DEFAULT_ADAPTER_DIR.iterdir() if p.suffix != '.py'))\n"
    )
    # Run from an empty folder with the unpacked wheel first on the path: nothing of the repository is importable.
    result = run_python(code, cwd=tmp_path, PYTHONPATH=str(tmp_path / "site"))
    assert result.returncode == 0, result.stderr
    origin, total, adapter_files = result.stdout.splitlines()
    assert origin.startswith(str(tmp_path / "site"))
    assert float(total) == pytest.approx(1.0)
    assert "adapter_model.safetensors" in adapter_files and "lukv_profile_lookahead.safetensors" in adapter_files


def test_core_evicts_without_triton_evaluate_or_gguf():
    # A None entry in sys.modules makes `import name` fail, as on a machine where it is not installed.
    code = (
        "import sys\n"
        "for name in ('triton', 'evaluate', 'datasets', 'gguf', 'matplotlib'):\n"
        "    sys.modules[name] = None\n"
        "import torch\n"
        "from transformers import AutoModelForCausalLM, LlamaConfig\n"
        "from lookahead_cache import LookaheadCache\n"
        "from lookahead_cache.prefill import CACHE_ARGUMENT\n"
        "config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,\n"
        "                     num_attention_heads=4, num_key_value_heads=2)\n"
        "model = AutoModelForCausalLM.from_config(config).eval()\n"
        "cache = LookaheadCache(budget=48, scorer='snapkv')\n"
        "model(torch.randint(3, 128, (1, 100)), **{CACHE_ARGUMENT: cache})\n"
        "print(cache.kept_tokens().unique().tolist())\n"
    )
    result = run_python(code, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[48]"
