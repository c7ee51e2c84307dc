"""The ``gmvae`` command line: ``gmvae train``, ``gmvae evaluate``, ``gmvae ppc``, ``gmvae sample``.

Each subcommand is a thin layer over the public functions of the package, which notebooks call too.
Errors a user can fix (bad data, impossible options, a run directory in the way) end with one
message that names the problem and the fix, and exit status 2; Ctrl-C during training saves a
checkpoint and exits with status 130.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    add_arguments,
    from_arguments,
)
from .errors import USER_ERRORS


def _add_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="fit a GMVAE and write a run directory",
        description="Fit a GMVAE by SVI with TraceEnum_ELBO (the cluster y is summed out exactly) "
        "and write config.json, metrics.jsonl, checkpoint.pt and figures/ into --out.",
    )
    p.add_argument("--out", required=True, type=Path, help="run directory to create")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--force", action="store_true", help="start the run in --out over")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plots", action="store_true", help="skip the figures at the end")
    # Suppressed defaults: on --resume, only flags actually given may change the saved config.
    for cls in (DataConfig, ModelConfig, TrainConfig):
        add_arguments(p, cls, suppress_defaults=True)
    p.set_defaults(func=cmd_train)


# Options that may change when a run is resumed; every other one must match the saved run.
RESUMABLE = {"epochs", "device"}


def _run_config(args: argparse.Namespace) -> RunConfig:
    if not args.resume:
        return RunConfig(
            data=from_arguments(DataConfig, args),
            model=from_arguments(ModelConfig, args),
            train=from_arguments(TrainConfig, args),
        )
    from .runs import CONFIG_FILE

    saved = RunConfig.load(args.out / CONFIG_FILE)
    given = RunConfig(
        data=from_arguments(DataConfig, args, saved.data),
        model=from_arguments(ModelConfig, args, saved.model),
        train=from_arguments(TrainConfig, args, saved.train),
    )
    for section in ("data", "model", "train"):
        old, new = getattr(saved, section).__dict__, getattr(given, section).__dict__
        changed = [k for k in old if old[k] != new[k] and k not in RESUMABLE]
        if changed:
            flags = ", ".join("--" + k.replace("_", "-") for k in changed)
            raise ConfigError(
                f"{flags} differ from the run being resumed in {args.out}; drop them to resume, "
                "or start a new run (another --out, or --force)"
            )
    return given


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainingDiverged, TrainingInterrupted, train_run

    config = _run_config(args)
    try:
        result = train_run(
            config,
            args.out,
            resume=args.resume,
            force=args.force,
            progress=not args.no_progress,
            plots=not args.no_plots,
        )
    except TrainingInterrupted as e:
        print(f"gmvae: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        # A second Ctrl-C, or one before training began: nothing new was saved, and atomic
        # writes leave the previous checkpoint whole.
        print(
            f"gmvae: stopped at once; the last checkpoint in {args.out}, if any, is intact: "
            "resume with --resume",
            file=sys.stderr,
        )
        return 130
    except TrainingDiverged as e:
        print(f"gmvae: training diverged: {e}", file=sys.stderr)
        return 3
    print(json.dumps(result, indent=2))
    return 0


def _load_run_data(args: argparse.Namespace, model):
    """``args.data`` preprocessed as the run in ``args.run_dir`` saw its training data: images
    as images, tables standardized with the run's ``scaler.json``."""
    from .data import Scaler, load_data
    from .runs import SCALER_FILE

    run_dir = args.run_dir if args.run_dir.is_dir() else args.run_dir.parent
    is_image = model.config.image_shape is not None
    scaler = None
    if (run_dir / SCALER_FILE).exists():
        scaler = Scaler.from_dict(json.loads((run_dir / SCALER_FILE).read_text()))
    elif not is_image:
        print(
            f"gmvae {args.command}: warning: {run_dir} has no {SCALER_FILE}; the table is "
            "standardized with its own means and standard deviations",
            file=sys.stderr,
        )
    return load_data(
        args.data,
        label_column=args.label_column,
        scaler=scaler,
        kind="image" if is_image else "table",
    )


def _add_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score a trained run on data: clustering, ELBO, log p(x)",
        description="Score the model in RUN_DIR on --data without refitting anything on it: "
        "clustering accuracy (Hungarian one-to-one, and many-to-one), NMI, ARI and cluster "
        "sizes when the data has labels, the mean ELBO per example and an importance-weighted "
        "estimate of log p(x) (exact over the cluster y, sampled over z). Tables are "
        "standardized with the run's scaler.json.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory of gmvae train")
    p.add_argument("--data", required=True, help="data to score, as for gmvae train --data")
    p.add_argument("--label-column", default=None, help="CSV column holding labels")
    p.add_argument(
        "--num-samples",
        type=int,
        default=100,
        help="importance samples of z per example for log p(x) (default 100)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the z samples")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (keys accuracy, nmi, ari, elbo, log_likelihood, n, ...)",
    )
    p.add_argument("--save", action="store_true", help="also write RUN_DIR/evaluation.json")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import EVALUATION_FILE, evaluate, format_evaluation
    from .files import atomic_write_text
    from .model import GMVAE

    if args.num_samples < 1:
        raise ConfigError(f"--num-samples must be at least 1, not {args.num_samples}")
    model = GMVAE.load(args.run_dir)
    run_dir = args.run_dir if args.run_dir.is_dir() else args.run_dir.parent
    dataset = _load_run_data(args, model)
    result = evaluate(model, dataset, num_samples=args.num_samples, seed=args.seed)
    result |= {"run_dir": str(args.run_dir), "data": dataset.name}
    if args.save:
        atomic_write_text(run_dir / EVALUATION_FILE, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result) if args.json else format_evaluation(result))
    return 0


def _add_ppc(subparsers) -> None:
    p = subparsers.add_parser(
        "ppc",
        help="posterior predictive checks: does data replicated from the model look like --data?",
        description="Draw replicated data from the model in RUN_DIR, given each example through "
        "the guide (posterior predictive) and from scratch (prior predictive), with Pyro's "
        "Predictive, and compare test statistics with the data: mean intensity per image, "
        "per-pixel (per-feature) means and variances, cluster proportions, log p(x) of held-out "
        "vs training data, and the distance of generated examples to their nearest training "
        "example (memorisation). Prints a table; writes report.md, ppc.json and figures/ "
        "into --out.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory of gmvae train")
    p.add_argument("--data", required=True, help="the run's training data, as for gmvae train")
    p.add_argument("--out", required=True, type=Path, help="directory for the report")
    p.add_argument("--label-column", default=None, help="CSV column holding labels")
    p.add_argument(
        "--num-samples",
        type=int,
        default=100,
        help="replicated data sets per predictive (default 100; p-values resolve to 2/S)",
    )
    p.add_argument(
        "--heldout-fraction",
        type=float,
        default=None,
        help="fraction of --data held out from the checks' training side (default: the run's "
        "own, split with the run's seed, so it is exactly the data the run never saw)",
    )
    p.add_argument(
        "--max-examples",
        type=int,
        default=2000,
        help="check a random subset of this many examples, to bound the cost (default 2000; "
        "0: all)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the replicates")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_ppc)


def cmd_ppc(args: argparse.Namespace) -> int:
    from .model import GMVAE
    from .ppc import REPORT_FILE, posterior_predictive_checks
    from .runs import CONFIG_FILE, write_ppc_report

    if args.num_samples < 2:
        raise ConfigError(f"--num-samples must be at least 2, not {args.num_samples}")
    if args.max_examples < 0:
        raise ConfigError(f"--max-examples must be at least 0, not {args.max_examples}")
    model = GMVAE.load(args.run_dir)
    run_dir = args.run_dir if args.run_dir.is_dir() else args.run_dir.parent
    run = RunConfig.load(run_dir / CONFIG_FILE) if (run_dir / CONFIG_FILE).exists() else None
    if args.label_column is None and run is not None:
        args.label_column = run.data.label_column
    dataset = _load_run_data(args, model)
    fraction = args.heldout_fraction
    if fraction is None:
        fraction = run.data.heldout_fraction if run is not None else 0.0
    if not 0 <= fraction < 1:
        raise ConfigError(f"--heldout-fraction must be in [0, 1), not {fraction}")
    heldout = None
    if fraction > 0:
        dataset, heldout = dataset.split(fraction, seed=run.train.seed if run else 0)
    report = posterior_predictive_checks(
        model,
        dataset,
        heldout=heldout,
        num_samples=args.num_samples,
        seed=args.seed,
        max_examples=args.max_examples or None,
        progress=not args.no_progress,
    )
    write_ppc_report(report, args.out)
    print(report.to_table())
    print(f"\nreport: {args.out / REPORT_FILE}")
    return 0


def _add_sample(subparsers) -> None:
    p = subparsers.add_parser(
        "sample",
        help="a PNG of generated examples, one row per cluster",
        description="Generate --per-cluster examples from each cluster of the model in RUN_DIR "
        "(z ~ p(z|y), shown as the mean of p(x|z)) and save them as a grid, one row per cluster "
        "(per-feature profiles for tables).",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory of gmvae train")
    p.add_argument("--per-cluster", type=int, default=10, help="examples per cluster (default 10)")
    p.add_argument("--out", required=True, type=Path, help="PNG file to write")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    from .model import GMVAE
    from .plots import samples_figure, save_figure

    if args.per_cluster < 1:
        raise ConfigError(f"--per-cluster must be at least 1, not {args.per_cluster}")
    if args.out.suffix.lower() != ".png":
        raise ConfigError(f"--out must name a .png file, not {args.out}")
    model = GMVAE.load(args.run_dir)
    print(save_figure(samples_figure(model, args.per_cluster, seed=args.seed), args.out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gmvae",
        description="Gaussian-mixture VAE in Pyro: unsupervised clustering and per-cluster generation.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_train(subparsers)
    _add_evaluate(subparsers)
    _add_ppc(subparsers)
    _add_sample(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"gmvae {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
