"""The README and the quickstart run as written, and our code raises no deprecation warning on today's transformers.

A warning "comes from our code" when a frame of this package, of a README block or of the quickstart is on the
stack that raised it: what a user running them would see and could only fix by changing our code.
"""

import re
import runpy
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from lookahead_cache.cli import main
from lookahead_cache.prefill import CACHE_ARGUMENT

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = str(REPO_ROOT / "src" / "lookahead_cache")
README_BLOCK = "<README.md python block {}>"
needs_cache_keyword = pytest.mark.skipif(
    CACHE_ARGUMENT != "cache", reason="the docs pass the cache as `cache=`, which transformers takes from 5.24 on"
)


def readme_python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (REPO_ROOT / "README.md").read_text(), flags=re.S | re.M)


def readme_bash_blocks() -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", (REPO_ROOT / "README.md").read_text(), flags=re.S | re.M)


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {_github_anchor(heading) for heading in re.findall(r"^#+ (.*)$", text, flags=re.M)}


def test_readme_test_command_is_the_one_ci_runs():
    # The README's two commands (demo, tests) come first; CI runs the second one as written.
    demo, tests = (block.strip() for block in readme_bash_blocks()[:2])
    assert demo.endswith("lookahead-cache demo") and tests.endswith("python -m pytest -q -n auto --maxprocesses 4")
    assert tests in (REPO_ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize(
    "page", ["README.md", *sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "docs").glob("*.md"))]
)
def test_markdown_links_resolve(page):
    """Every relative link of the README and the docs pages names a file of the repository (and a heading of it)."""
    path = REPO_ROOT / page
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in _anchors(linked)):
            broken.append(target)
    assert broken == []


def _is_ours(filename: str) -> bool:
    return filename.startswith((PACKAGE_DIR, str(REPO_ROOT / "examples"))) or filename.startswith("<README.md")


@contextmanager
def deprecations_from_our_code():
    """Yields the list of (category, message, our innermost frame) of every FutureWarning or DeprecationWarning
    raised with our code on the stack, and of transformers' logged deprecation notices."""
    found = []

    def showwarning(message, category, filename, lineno, file=None, line=None):
        ours = [frame for frame in traceback.extract_stack() if _is_ours(frame.filename)]
        if issubclass(category, (FutureWarning, DeprecationWarning)) and ours:
            found.append((category.__name__, str(message), f"{ours[-1].filename}:{ours[-1].lineno}"))

    logger = logging.get_logger("transformers")
    with warnings.catch_warnings(), CaptureLogger(logger) as logged:
        warnings.simplefilter("always")
        warnings.showwarning = showwarning
        yield found
    found.extend(("log", line, "transformers") for line in logged.out.splitlines() if "deprecated" in line)


@pytest.fixture(autouse=True)
def _forget_logged_once():
    # transformers logs a deprecation notice once per process: forget earlier ones so that each test sees its own.
    logging.get_logger("transformers").warning_once.cache_clear()


@pytest.mark.slow
@needs_cache_keyword
@pytest.mark.parametrize("index", range(len(readme_python_blocks())))
def test_readme_python_block_runs_as_written_without_deprecations(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks may write files (an adapter folder)
    code = compile(readme_python_blocks()[index], README_BLOCK.format(index), "exec")
    with deprecations_from_our_code() as found:
        exec(code, {"__name__": "__main__"})
    assert found == []


@pytest.mark.slow
@needs_cache_keyword
def test_quickstart_runs_without_deprecations(capsys):
    with deprecations_from_our_code() as found:
        runpy.run_path(str(REPO_ROOT / "examples" / "quickstart.py"), run_name="__main__")
    assert found == []
    output = capsys.readouterr().out
    assert output.count("generate (") == 2 and output.count("pipeline: ") == 2 and "MiB instead of" in output


@pytest.mark.slow
def test_short_eval_and_bench_raise_no_deprecations(tiny_model_dir, tmp_path, capsys):
    # Random weights with the embedded tokenizer: the evaluation and benchmark code paths, without loading SmolLM2.
    with deprecations_from_our_code() as found:
        eval_argv = ["eval", "--model", str(tiny_model_dir), "--tasks", "niah_single_noise", "--lengths", "512"]
        eval_argv += ["--samples", "1", "--budgets", "64", "--methods", "full", "snapkv", "--out", str(tmp_path)]
        assert main(eval_argv) == 0
        bench_argv = ["bench", "--random-weights", "--lengths", "256", "--budget", "64", "--scorers", "snapkv"]
        bench_argv += ["lookahead", "--decode-tokens", "2", "--repeats", "1"]
        assert main(bench_argv) == 0
    assert found == []
    assert "snapkv" in capsys.readouterr().out
