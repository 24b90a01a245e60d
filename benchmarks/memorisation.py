"""How much of the wrong labels each run of the label-noise study has learnt (command line).

Measures, on each finished run of the study whose selected model (`best.keras`)
is on disk, the share of its training examples predicted as their given and
their true labels, clean and noisy apart (`bisam_keras.experiments.
study_memorisation`), writes `<output>/memorisation.json` and fills the
memorisation section of the report.

```
python benchmarks/memorisation.py                       # results/label-noise, docs/results.md
python benchmarks/memorisation.py --output DIR --docs F --data-dir ../shared/data/cifar10
```
"""

import argparse
import os
import sys

from bisam_keras.experiments import study, study_memorisation, study_report, study_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default=study.DEFAULTS["output"], help="the study's folder")
    p.add_argument("--docs", default=os.path.join(ROOT, "docs", "results.md"))
    p.add_argument("--data-dir", help="the CIFAR-10 folder, if not where the runs read it")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not study_runs.collect(args.output):
        raise SystemExit(f"no finished runs below {args.output!r}")
    rows, skipped = study_memorisation.measure_runs(args.output, data_dir=args.data_dir)
    command = "python benchmarks/memorisation.py " + " ".join(
        sys.argv[1:] if argv is None else list(argv)
    )
    text = study_memorisation.section(rows, skipped, command.strip())
    study_report.replace_section(args.docs, "memorisation", text)
    print(
        f"wrote {os.path.join(args.output, 'memorisation.json')} and the memorisation "
        f"section of {args.docs}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
