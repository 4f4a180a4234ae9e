"""Calibrate a new board from a CSV of 20 measured models (no TVM, no RPC: you timed them yourself).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python examples/calibrate_new_board_from_table.py --out my-board.toml

What a user with a new board does, end to end:

1. Describe the device: copy the closest target file (here pixel-3.toml) and change its fields.
2. Time ~20 models on the board with the runtime you deploy with (TFLite's benchmark_model, say) and
   write them down: one CSV row per model, naming a model factory (or an exported .pt2 file) and the
   latency. Here the 20 rows are Pixel 3 measurements of NAS-Bench-201 cells published by HW-NAS-Bench
   (targets/data/nasbench201_pixel3.csv), standing in for yours; its 300 `test` rows are kept apart.
3. Fit: `hwopt calibrate --target my-board.toml --from-table my-board.csv --runtime tflite
   --prior cortex-a72:tflite --make-default`. With 20 rows the fit starts from a related device's table
   (`--prior`) and moves each coefficient only as far as the data asks (HELP's point). It prints the
   leave-one-out error and rank correlation and writes them into the table.
4. `hwopt targets` (or `load_target(...).provenance()`) shows where each table comes from and its
   held-out error; `hwopt optimize --target my-board.toml ...` now uses the fitted table.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import hwopt  # noqa: E402
from hwopt.targets import calibrate, load_target  # noqa: E402

TARGETS = Path(hwopt.targets.__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="my-board.toml", help="the new target file to write")
    ap.add_argument("--rows", type=int, default=20, help="fit rows to use (the CSV has 20)")
    ap.add_argument("--test-rows", type=int, default=300, help="test rows to check the fit on (the CSV has 300)")
    a = ap.parse_args()
    out = Path(a.out)
    # 1. the device file: a copy of pixel-3.toml renamed, starting from its bootstrap-free fields
    text = (TARGETS / "pixel-3.toml").read_text()
    text = re.sub(r'^name = ".*"$', f'name = "{out.stem}"', text, count=1, flags=re.M)
    out.write_text(text)
    # 2. the measurements: 20 fit rows (+ test rows, never fit) in the table format calibrate reads
    lines = (TARGETS / "data" / "nasbench201_pixel3.csv").read_text().splitlines()
    fit = [x for x in lines[1:] if x.endswith(",fit")][:a.rows]
    test = [x for x in lines[1:] if x.endswith(",test")][:a.test_rows]
    table = out.with_suffix(".csv")
    table.write_text("\n".join([lines[0]] + fit + test) + "\n")
    print(f"{table}: {len(fit)} measured models to fit, {len(test)} kept apart")
    # 3. the fit (the same as the command line in the docstring)
    calibrate.main(["--target", str(out), "--from-table", str(table), "--runtime", "tflite",
                    "--prior", "cortex-a72:tflite", "--make-default"])
    # 4. provenance and held-out error, as `hwopt targets` shows them
    t = load_target(str(out))
    for p in t.provenance():
        err = f"{p['heldout_error']:.1%}" if p["heldout_error"] is not None else "-"
        print(f"{t.name} [{p['runtime']}]: {p['provenance']}, {p['samples']} samples, held-out |err| {err}, "
              f"Spearman {p['rank_correlation']}, test {p['test_samples']} rows: {p['test_error']}")


if __name__ == "__main__":
    main()
