"""The ``gmvae`` command line: ``gmvae train``, ``gmvae select``, ``gmvae evaluate``, ``gmvae ppc``,
``gmvae sample``.

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
import math
import signal
import sys
from dataclasses import fields
from pathlib import Path

from .config import (
    SUPERVISED_OPTIONS,
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


# Options of gmvae train that mean nothing to a selection, which keeps no checkpoints and
# clusters without labels.
_NOT_SELECT_FLAGS = {"clusters", "checkpoint_every", "checkpoint_minutes", *SUPERVISED_OPTIONS}


def _add_select(subparsers) -> None:
    p = subparsers.add_parser(
        "select",
        help="choose K: fit each candidate K, score held-out rows, recommend one",
        description="Fit a GMVAE for each K of --clusters on the same training rows from the "
        "same seed, score the held-out rows (--heldout-fraction) by an importance-weighted "
        "estimate of log p(x) and by the ELBO, count the clusters each K uses, and recommend "
        "the smallest K whose held-out log-likelihood is within one standard error of the best "
        "K's. Labels, when the data has them, are only reported (accuracy, NMI), never used to "
        "choose. Writes selection.json, selection.md and figures/selection.png into --out and "
        "prints the table with the rule. Model and training options are those of gmvae train, "
        "with its defaults; tables are standardized as gmvae train does.",
    )
    p.add_argument("--data", required=True, help="data, as for gmvae train --data")
    p.add_argument(
        "--clusters",
        type=int,
        nargs="*",
        default=None,
        metavar="K",
        help="the candidate numbers of clusters, space separated, e.g. 4 6 8 10 12 14",
    )
    p.add_argument("--out", required=True, type=Path, help="directory for the selection")
    p.add_argument("--force", action="store_true", help="replace an earlier selection in --out")
    p.add_argument("--label-column", default=None, help="CSV column holding labels (reported only)")
    p.add_argument("--kind", default=None, help="force 'image' or 'table' instead of guessing")
    p.add_argument(
        "--heldout-fraction",
        type=float,
        default=0.2,
        help="fraction of rows held out to score each K (default 0.2)",
    )
    p.add_argument(
        "--num-samples",
        type=int,
        default=100,
        help="importance samples of z per held-out row for log p(x) (default 100)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="Ks fitted at once, each in a process of its own on one thread (default 1; -1: "
        "one per CPU core)",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="print nothing on stderr before the table"
    )
    for cls in (ModelConfig, TrainConfig):
        add_arguments(p, cls, suppress_defaults=True, exclude=_NOT_SELECT_FLAGS)
    p.set_defaults(func=cmd_select)


def _selection_parameters(args: argparse.Namespace, kind: str) -> dict:
    """The estimator parameters of the flags given (only those: the rest keep the library's
    defaults), checked by the configs they come from."""
    model, train = (
        {
            f.name: getattr(args, f.name)
            for f in fields(cls)
            if f.name not in _NOT_SELECT_FLAGS and hasattr(args, f.name)
        }
        for cls in (ModelConfig, TrainConfig)
    )
    for values in (model, train):
        values.update({k: tuple(v) for k, v in values.items() if isinstance(v, list)})
    # As gmvae train: images get a Bernoulli likelihood unless told, tables need a Gaussian.
    model.setdefault("likelihood", "gaussian" if kind == "table" else ModelConfig().likelihood)
    if kind == "table" and model["likelihood"] != "gaussian":
        raise DataError(
            f"{args.data} is a standardized table; the {model['likelihood']} likelihood needs "
            "values in [0, 1]: pass --likelihood gaussian (or --kind image for images)"
        )
    ModelConfig(clusters=max(args.clusters), **model).validate()
    TrainConfig(**train).validate()
    params = dict(model)
    params["random_state"] = train.pop("seed", TrainConfig().seed)
    params["device"] = train.pop("device", None)
    from .estimator import TRAIN_PARAMETERS  # torch: only once the command runs

    params |= {name: train.pop(name) for name in TRAIN_PARAMETERS if name in train}
    if train:
        params["train_options"] = train
    return params


def cmd_select(args: argparse.Namespace) -> int:
    from .data import load_data
    from .likelihoods import LIKELIHOODS
    from .runs import locked
    from .selection import (
        SELECTION_FILE,
        check_candidates,
        check_selection_directory,
        select_clusters,
        write_selection,
    )
    from .start import check_start
    from .train import TrainingDiverged, resolve_device

    ks = args.clusters
    if not ks:
        raise ConfigError("--clusters needs the candidate Ks, e.g. --clusters 4 6 8 10 12 14")
    repeated = sorted({k for k in ks if ks.count(k) > 1})
    if repeated:
        raise ConfigError(f"--clusters repeats {repeated}; give each candidate K once")
    if args.jobs == 0 or args.jobs < -1:
        raise ConfigError(f"--jobs must be a positive number of processes or -1, not {args.jobs}")
    if args.num_samples < 1:
        raise ConfigError(f"--num-samples must be at least 1, not {args.num_samples}")
    check_selection_directory(args.out, force=args.force)
    dataset = load_data(args.data, label_column=args.label_column, kind=args.kind)
    try:
        check_candidates(ks, len(dataset), args.heldout_fraction)
    except ConfigError as e:
        # The library names its arguments; the user typed flags.
        text = str(e).replace("ks is empty", "--clusters is empty")
        raise ConfigError(text.replace("heldout_fraction", "--heldout-fraction")) from None
    params = _selection_parameters(args, dataset.kind)
    if params["likelihood"] not in LIKELIHOODS:
        raise ConfigError(
            f"--likelihood must be one of {', '.join(LIKELIHOODS)}, not {params['likelihood']!r}"
        )
    resolve_device(params["device"])
    n_train = len(dataset) - math.ceil(args.heldout_fraction * len(dataset))
    check_start(
        params.get("init", TrainConfig().init),
        n_train,
        max(ks),
        TrainConfig(**params.get("train_options", {})),
    )
    if dataset.image_shape is not None:
        params["image_shape"] = dataset.image_shape
    if not args.no_progress:
        print(
            f"gmvae select: fitting K = {', '.join(map(str, sorted(ks)))} on {dataset.name} "
            f"({len(dataset)} rows, {args.heldout_fraction:g} held out), {args.jobs} at a time",
            file=sys.stderr,
        )
    # Every check has passed: only now is anything on disk created or replaced.
    args.out.mkdir(parents=True, exist_ok=True)
    with locked(args.out):
        check_selection_directory(args.out, force=args.force)  # checked again, now ours
        try:
            selection = select_clusters(
                dataset.x,
                ks,
                labels=dataset.labels,
                heldout_fraction=args.heldout_fraction,
                n_importance_samples=args.num_samples,
                n_jobs=args.jobs,
                **params,
            )
        except TrainingDiverged as e:  # as gmvae train: nothing was written, status 3
            print(f"gmvae select: training diverged: {e}", file=sys.stderr)
            return 3
        settings = {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}
        extra = {
            "data": dataset.name,
            "rows": len(dataset),
            "heldout_fraction": args.heldout_fraction,
            "n_importance_samples": args.num_samples,
            "parameters": settings,
        }
        paths = write_selection(selection, args.out, extra)
    print(selection.format())
    print(f"\nselection: {args.out / SELECTION_FILE}; figure: {paths[-1]}")
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
    tied = run.config is not None and run.config.train.semi_supervised
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
    _add_select(subparsers)
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
