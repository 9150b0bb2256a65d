"""Wall time and peak memory of the README's main job (default training on the embedded sample).

    python benchmarks/main_job.py [--output_dir /tmp/cunerf_main_job]

Runs `python -m monai.bundle run training --config_file bundle/configs/train.json` in a child process and reports
its wall time and peak resident memory, with the machine line, to benchmarks/results/main_job.md.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output_dir", default="/tmp/cunerf_main_job")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "main_job.md"))
    ap.add_argument("--update-docs", dest="update_docs", action="store_true",
                    help="write the table into the Performance section of bundle/docs/README.md")
    args = ap.parse_args(argv)
    from cunerf_monai.evaluation.selfeval import machine_description

    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
           str(ROOT / "bundle" / "configs" / "train.json"), "--output_dir", args.output_dir, "--resume", "False"]
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if res.returncode != 0:
        sys.exit(f"training failed:\n{res.stderr[-3000:]}")
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    text = (f"Machine: {machine_description()}\n\n| job | wall time | peak RSS |\n|---|---|---|\n"
            f"| default training on the embedded sample (train.json) | {seconds / 60:.1f} min | {peak_mb:,.0f} MB |\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    if args.update_docs:
        from docs_block import DOCS, replace_block

        replace_block(DOCS, "main_job", text)
    print(text)


if __name__ == "__main__":
    main()
