"""`pagesim report RESULTS_DIR`: (re)build the HTML report of a run, sweep or plan folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pagesim report", description="Write report.html for a results folder.")
    p.add_argument("results_dir", help="a folder written by pagesim run, sweep or plan")
    p.add_argument("--out", help="where to write the HTML (default RESULTS_DIR/report.html)")
    p.add_argument("--check", action="store_true",
                   help="open it in headless Chromium: fail on console errors or undrawn charts, save a screenshot")
    args = p.parse_args(argv)
    from reports.build import build_report

    path = build_report(Path(args.results_dir), args.out)
    print(f"report: {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if args.check:
        from reports.headless import check_page

        result = check_page(path, path.with_suffix(".png"))
        print(f"chromium: {result.charts_rendered}/{result.charts_expected} charts drawn, "
              f"{len(result.errors)} console errors; screenshot {result.screenshot}")
        for e in result.errors:
            print(f"  error: {e}", file=sys.stderr)
        return 0 if result.ok else 1
    return 0
