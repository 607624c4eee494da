"""Writes docs/results.md (and its figures) from an evaluation folder, and copies the raw rows beside it.

Usage: python scripts/results_page.py [OUT]   (default OUT: runs/quick)
"""

import shutil
import sys
from pathlib import Path

from lookahead_cache.evaluation.report import write_results_page

# Everything the page shows, in the order it is produced; each step is resumable.
COMMAND = "bash scripts/quick_results.sh && bash scripts/default_adapter.sh && bash scripts/lukv_profiles.sh"

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/quick")
write_results_page(out, "docs/results.md", command=COMMAND)
data = Path("docs/results/data")
data.mkdir(parents=True, exist_ok=True)
for path in [out / "settings.json", out / "bench.json", *out.glob("predictions*.jsonl")]:
    if path.exists():
        shutil.copy(path, data / path.name)
print("Wrote docs/results.md")
