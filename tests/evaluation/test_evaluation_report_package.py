"""The report package: its public names stay importable from `lookahead_cache.evaluation.report`, and the table
helpers live in `report.tables`, which the benchmark imports rather than the other way round."""

import subprocess
import sys

import pytest

from lookahead_cache.evaluation import report
from lookahead_cache.evaluation.report import page, plots, statistics, tables

# Every name imported from, or patched on, `lookahead_cache.evaluation.report` in src/, scripts/ and tests/.
USED_NAMES = (
    "AVERAGE",
    "check_row",
    "eviction_cost_table",
    "load_rows",
    "lookahead_table",
    "markdown_summary",
    "plot_accuracy_vs_budget",
    "plot_overhead",
    "summarize",
    "write_results_page",
)


def test_public_names_are_re_exported_from_their_modules():
    for name in USED_NAMES:
        assert name in report.__all__
    homes = {
        statistics: ("AVERAGE", "check_row", "load_rows", "summarize"),
        tables: ("eviction_cost_table", "format_results", "lookahead_table", "markdown_summary", "markdown_table"),
        plots: ("plot_accuracy_vs_budget", "plot_overhead"),
        page: ("write_results_page",),
    }
    for module, names in homes.items():
        for name in names:
            assert getattr(report, name) is getattr(module, name)


@pytest.mark.slow
def test_report_does_not_import_the_benchmark():
    code = (
        "import sys\n"
        "import lookahead_cache.evaluation.report\n"
        "print('lookahead_cache.evaluation.benchmark' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "False"


def test_markdown_table_pads_columns():
    assert tables.markdown_table(["a", "bb"], [["ccc", "d"]]) == "| a   | bb |\n|-----|----|\n| ccc | d  |"
