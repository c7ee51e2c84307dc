"""The ``gmvae`` command line: ``gmvae train``, ``gmvae evaluate``, ``gmvae ppc``, ``gmvae sample``.

Each subcommand is a thin layer over the public functions of the package, which notebooks call too.
Errors a user can fix (bad data, impossible options, a run directory in the way) end with one
message that names the problem and the fix, and exit status 2; Ctrl-C during training saves a
checkpoint and exits with status 130.

This module imports nothing heavy: torch, Pyro and scikit-learn are imported by the command that
runs, so ``--help``, ``--version`` and a mistyped flag answer at once.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import fields
from pathlib import Path

from .config import (
    DataConfig,
    DistributedConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    add_arguments,
    from_arguments,
)
from .errors import USER_ERRORS, ConfigError, DataError

#: The largest grid ``gmvae sample`` draws, per cluster.
MAX_PER_CLUSTER = 100
#: The most memory the replicated data of ``gmvae ppc`` may take.
MAX_REPLICATE_BYTES = 4 * 2**30


def _add_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="fit a GMVAE and write a run directory",
        description="Fit a GMVAE by SVI with TraceEnum_ELBO (the cluster y is summed out exactly) "
        "and write config.json, metrics.jsonl, checkpoint.pt and figures/ into --out. A new run "
        "needs --clusters K; --resume continues a run with the options of its config.json.",
    )
    p.add_argument("--out", required=True, type=Path, help="run directory to create")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--force", action="store_true", help="start the run in --out over")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plots", action="store_true", help="skip the figures at the end")
    # Suppressed defaults: on --resume, only flags actually given may change the saved config.
    actions = {}
    for cls in (DataConfig, ModelConfig, TrainConfig):
        actions |= add_arguments(p, cls, suppress_defaults=True)
    # ModelConfig's K=10 serves the Python API; on the command line a new run must choose K (main
    # refuses one without it), since 10 clusters fitted silently to data with 3 mislead.
    # Not in config.json: a run may resume on more or fewer processes than it began with.
    add_arguments(p, DistributedConfig, suppress_defaults=False)
    clusters = actions["clusters"]
    clusters.metavar = "K"
    clusters.help = (
        clusters.help.rpartition(" (default:")[0]
        + ": required for a new run (--resume reads it from the run's config.json)"
    )
    p.set_defaults(func=cmd_train)


def _run_config(args: argparse.Namespace) -> RunConfig:
    """The run's configuration from the flags; on ``--resume``, the saved one with the flags
    given (only ``--epochs`` and ``--device`` may differ)."""
    if not args.resume:
        return RunConfig(
            data=from_arguments(DataConfig, args),
            model=from_arguments(ModelConfig, args),
            train=from_arguments(TrainConfig, args),
        )
    from .runs import resumed_config

    given = {
        section: {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        for section, cls in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig))
    }
    for values in given.values():
        values.update({k: tuple(v) for k, v in values.items() if isinstance(v, list)})
    return resumed_config(args.out, given)


def cmd_train(args: argparse.Namespace) -> int:
    from .runs import train_run
    from .train import TrainingDiverged, TrainingInterrupted, TrainingProcessLost

    config = _run_config(args)
    try:
        result = train_run(
            config,
            args.out,
            resume=args.resume,
            force=args.force,
            progress=not args.no_progress,
            plots=not args.no_plots,
            distributed=from_arguments(DistributedConfig, args),
        )
    except TrainingInterrupted as e:
        print(f"gmvae: {e}", file=sys.stderr)
        return 128 + (e.signal or signal.SIGINT)
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
    except TrainingProcessLost as e:
        print(f"gmvae: {e}", file=sys.stderr)
        return 4
    if "rank" not in result:  # the other processes of a multi-process run: rank 0 reports
        print(json.dumps(result, indent=2))
    return 0


def _open_run_data(args: argparse.Namespace):
    """The run in ``args.run_dir`` and ``args.data`` loaded as it saw its training data; the
    warnings go to stderr."""
    from .runs import load_run_data, open_run

    run = open_run(args.run_dir)
    dataset, warnings = load_run_data(run, args.data, args.label_column)
    for warning in warnings:
        print(f"gmvae {args.command}: warning: {warning}", file=sys.stderr)
    return run, dataset


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
    from .evaluate import MAX_NUM_SAMPLES, evaluate, format_evaluation
    from .runs import write_evaluation

    if not 1 <= args.num_samples <= MAX_NUM_SAMPLES:
        raise ConfigError(f"--num-samples must be in 1..{MAX_NUM_SAMPLES}, not {args.num_samples}")
    run, dataset = _open_run_data(args)
    tied = run.config is not None and run.config.train.labels_known > 0
    result = evaluate(
        run.model, dataset, num_samples=args.num_samples, seed=args.seed, classes=tied
    )
    result |= {"run_dir": str(args.run_dir), "data": dataset.name}
    if args.save:
        write_evaluation(run, result)
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
    from .ppc import REPORT_FILE, posterior_predictive_checks
    from .runs import heldout_split, write_ppc_report

    if args.num_samples < 2:
        raise ConfigError(f"--num-samples must be at least 2, not {args.num_samples}")
    if args.max_examples < 0:
        raise ConfigError(f"--max-examples must be at least 0, not {args.max_examples}")
    run, dataset = _open_run_data(args)
    dataset, heldout = heldout_split(run, dataset, args.heldout_fraction)
    checked = min(len(dataset), args.max_examples or len(dataset))
    needed = args.num_samples * checked * dataset.n_features * 4  # float32 replicates
    if needed > MAX_REPLICATE_BYTES:
        raise ConfigError(
            f"--num-samples {args.num_samples} replicates of {checked} examples need "
            f"{needed / 2**30:.1f} GiB, more than the {MAX_REPLICATE_BYTES / 2**30:.0f} GiB "
            "allowed; lower --num-samples or --max-examples"
        )
    if len(dataset) < 2:
        raise DataError(
            f"{dataset.name} has {len(dataset)} row(s) to check; the checks compare statistics "
            "across examples and need at least 2"
        )
    report = posterior_predictive_checks(
        run.model,
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

    if not 1 <= args.per_cluster <= MAX_PER_CLUSTER:
        raise ConfigError(
            f"--per-cluster must be in 1..{MAX_PER_CLUSTER} (a grid of more is unreadable), "
            f"not {args.per_cluster}"
        )
    if args.out.suffix.lower() != ".png":
        raise ConfigError(f"--out must name a .png file, not {args.out}")
    model = GMVAE.load(args.run_dir)
    print(save_figure(samples_figure(model, args.per_cluster, seed=args.seed), args.out))
    return 0


def _version() -> str:
    """The installed distribution's version, or the package's own where it is not installed
    (a checkout on ``sys.path``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyro_gmvae")
    except PackageNotFoundError:
        from . import __version__

        return __version__


class _VersionAction(argparse.Action):
    """``--version``: prints ``gmvae VERSION`` and exits. Unlike argparse's own ``version``
    action it looks the version up only when asked, sparing every other command the import of
    importlib.metadata."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{parser.prog} {_version()}")  # on stdout, as argparse prints its own version
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gmvae",
        description="Gaussian-mixture VAE in Pyro: unsupervised clustering and per-cluster generation.",
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
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
        if args.command == "train" and not args.resume and "clusters" not in args:
            raise ConfigError("--clusters is required for a new run: choose K with --clusters K")
        return args.func(args)
    except USER_ERRORS as e:
        print(f"gmvae {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # An output that cannot be written (read-only, full, a path under a file): the
        # atomic writes left every file that was there whole.
        where = f" {e.filename}" if e.filename else ""
        print(
            f"gmvae {args.command}: error: cannot write or read{where}: {e.strerror or e}; "
            "check the path and its permissions, or the free space",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"gmvae {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
