"""Evaluation outputs -> summary tables, plots and a results page.

An evaluation run writes one JSON object per (sample, mode, method, budget) to `DIR/predictions*.jsonl`, and
`lookahead-cache bench --out DIR/bench.json` writes the speed and memory measurements. This package turns them
into:

* `summarize` (`statistics`): mean score and a 95% confidence interval per (mode, context length, family, method,
  budget), plus a macro `"average"` over families, from the rows `load_rows` reads;
* `markdown_summary` (`tables`): one table per (mode, context length), beside the other markdown tables;
* `plot_accuracy_vs_budget` and `plot_overhead` (`plots`): PNG figures;
* `live_mode_comparisons` (`comparisons`): the live modes of `lookahead-cache eval` (streaming prefill, sessions)
  beside the one-shot ones at equal budgets, and long answers with and without a generation budget, as paired
  differences with intervals;
* `write_results_page` (`page`): all of the above on one markdown page (docs/results.md).

Every number written comes from the rows, and everything is ordered deterministically, so that a regenerated
page only differs where the results do.
"""

from .comparisons import live_mode_comparisons
from .page import write_results_page
from .plots import plot_accuracy_vs_budget, plot_overhead
from .statistics import (
    AVERAGE,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CONFIDENCE,
    REQUIRED_FIELDS,
    SCORE_FIELDS,
    check_row,
    load_rows,
    summarize,
)
from .tables import (
    CAPTION,
    EVICTION_COST_CAPTION,
    eviction_cost_table,
    format_results,
    lookahead_table,
    markdown_summary,
    markdown_table,
)

__all__ = [
    "AVERAGE",
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "CAPTION",
    "CONFIDENCE",
    "EVICTION_COST_CAPTION",
    "REQUIRED_FIELDS",
    "SCORE_FIELDS",
    "check_row",
    "eviction_cost_table",
    "format_results",
    "live_mode_comparisons",
    "load_rows",
    "lookahead_table",
    "markdown_summary",
    "markdown_table",
    "plot_accuracy_vs_budget",
    "plot_overhead",
    "summarize",
    "write_results_page",
]
