"""The ``gmvae`` command line: flags mirror the config dataclasses, user errors exit 2 with one
line naming the flag, runs resume."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from pyro_gmvae.cli import main
from pyro_gmvae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from pyro_gmvae.errors import ConfigError
from pyro_gmvae.runs import read_metrics

CONFIG_CLASSES = (DataConfig, ModelConfig, TrainConfig)
FROM_DATA = {"n_features", "image_shape"}  # set from the data, not flags


def config_flags() -> list[str]:
    return [
        "--" + f.name.replace("_", "-")
        for cls in CONFIG_CLASSES
        for f in dataclasses.fields(cls)
        if f.name not in FROM_DATA
    ]


def test_train_help_lists_one_flag_per_config_field():
    done = subprocess.run(
        [sys.executable, "-m", "pyro_gmvae", "train", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    # argparse wraps lines; a flag is listed as a word of its own
    words = set(done.stdout.replace(",", " ").split())
    missing = [flag for flag in config_flags() if flag not in words]
    assert not missing, f"--help lacks {missing}"
    for flag in ("--data", "--clusters", "--out", "--resume", "--force", "--device", "--guide"):
        assert flag in words
    for name in FROM_DATA:
        assert "--" + name.replace("_", "-") not in words
    assert "--no-learn-weights" in words  # booleans can be switched off


def test_help_of_every_flag_is_its_field_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    # argparse re-wraps help text, breaking lines at spaces and hyphens: compare without them
    text = "".join(capsys.readouterr().out.split())
    for cls in CONFIG_CLASSES:
        for f in dataclasses.fields(cls):
            if f.name not in FROM_DATA:
                assert "".join(f.metadata["help"].split()) in text, f.name
    # The defaults are shown although the flags suppress them (so --resume can tell them apart).
    assert "(default:" + "".join(map(str, ModelConfig().hidden)) + ")" in text
    assert f"(default:{ModelConfig().latent_dim})" in text
    # --clusters has none on the command line: a new run must give it.
    assert "numberofmixturecomponentsK:requiredforanewrun" in text
    assert f"numberofmixturecomponentsK(default:{ModelConfig().clusters})" not in text


HEAVY = ("torch", "pyro", "sklearn", "matplotlib", "scipy")


def heavy_modules_after(code: str, cwd) -> list[str]:
    """The heavy libraries that a fresh interpreter in ``cwd`` has imported after ``code``."""
    probe = f"import sys\n{code}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=cwd
    )
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "code",
    [
        "import pyro_gmvae.cli; pyro_gmvae.cli.build_parser()",
        "import pyro_gmvae.config; pyro_gmvae.config.RunConfig().validate()",
        "import pyro_gmvae; pyro_gmvae.ConfigError, pyro_gmvae.ModelConfig, pyro_gmvae.DataError",
    ],
)
def test_the_parser_and_the_configs_import_nothing_heavy(code, tmp_path):
    """torch, Pyro and scikit-learn take seconds to import: the parser must not need them."""
    assert heavy_modules_after(code, tmp_path) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["train", "--help"],
        ["evaluate", "--help"],
        ["ppc", "--help"],
        ["sample", "--help"],
        ["select", "--help"],
        ["select", "--data", "digits", "--out", "r", "--clusters", "two"],
        ["train", "--no-such-flag"],
        ["train", "--out", "r", "--clusters", "ten"],
        ["train", "--out", "r"],  # a new run without --clusters
    ],
)
def test_help_version_and_argument_errors_import_nothing_heavy(argv, tmp_path):
    """They answer before any command runs, so at once."""
    code = "\n".join(
        [
            "from pyro_gmvae.cli import main",
            "try:",
            f"    main({argv!r})",
            "except SystemExit:",
            "    pass",
        ]
    )
    assert heavy_modules_after(code, tmp_path) == []
    assert not (tmp_path / "r").exists()  # and nothing ran


def test_version_is_the_installed_distributions(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"gmvae {version('pyro_gmvae')}\n"


def test_version_falls_back_to_the_package_where_not_installed(capsys, monkeypatch):
    import importlib.metadata

    import pyro_gmvae

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out == f"gmvae {pyro_gmvae.__version__}\n"


def test_gmvae_version_in_a_real_process():
    done = subprocess.run(
        [sys.executable, "-m", "pyro_gmvae", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0
    assert done.stdout.split() == ["gmvae", __import__("pyro_gmvae").__version__]


@pytest.fixture
def table(tmp_path):
    """A small labelled table (.npz, 6 features) with two clusters."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    x = rng.normal(size=(60, 6)) + 4.0 * labels[:, None]
    path = tmp_path / "table.npz"
    np.savez(path, X=x, y=labels)
    return path


def fast_args(data, out, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--clusters",
        "2",
        "--latent-dim",
        "2",
        "--hidden",
        "8",
        "--likelihood",
        "gaussian",
        "--batch-size",
        "32",
        "--restarts",
        "1",
        "--anchor-epochs",
        "0",
        "--init",  # named, so stderr holds no "chosen from the data" line
        "gmm",
        "--guide",
        "enumerated",
        "--device",
        "cpu",
        "--no-progress",
        "--no-plots",
        *extra,
    ]


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--clusters", "0"),
        ("--latent-dim", "-1"),
        ("--lr", "-1"),
        ("--likelihood", "nope"),
        ("--guide", "nope"),
        ("--network", "cnn"),
        ("--network", "conv"),  # the table is no image
        ("--batch-size", "0"),
        ("--hidden", "0"),
        ("--epochs", "-1"),
        ("--lr-decay", "2"),
        ("--heldout-fraction", "1"),
        ("--device", "tpu"),
        ("--tsne-perplexity", "0"),
        ("--tsne-iterations", "249"),
        ("--tsne-input", "pixels"),
        ("--umap-input", "pixels"),
        ("--umap-neighbors", "1"),
        ("--anchor-epochs", "-1"),
        ("--anchor-beta", "0"),
        ("--labels-known", "some"),
        ("--labels-known", "-1"),
    ],
)
def test_impossible_option_exits_2_naming_the_flag(table, tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    code = main(fast_args(table, out, "--epochs", "1", "--pretrain-epochs", "0", flag, value))
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("gmvae train: error:")
    assert flag in err
    assert not out.exists() or not any(out.iterdir())  # nothing was written


def test_labels_known_all_round_trips_from_the_flag_through_config_json(tmp_path):
    from pyro_gmvae.cli import build_parser
    from pyro_gmvae.config import from_arguments

    for flag, value in (("all", "all"), ("12", 12), ("0", 0)):
        args = build_parser().parse_args(["train", "--out", "x", "--labels-known", flag])
        assert from_arguments(TrainConfig, args).labels_known == value
    config = RunConfig(train=TrainConfig(labels_known="all"))
    config.save(tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["train"]["labels_known"] == "all"
    loaded = RunConfig.load(tmp_path / "config.json")
    assert loaded == config and loaded.train.semi_supervised
    assert not TrainConfig().semi_supervised
    with pytest.raises(ConfigError, match="--labels-known must be a number of rows"):
        RunConfig.from_dict({"train": {"labels_known": "some"}}).validate()
    with pytest.raises(ConfigError, match=re.escape("labels_known must be int | str")):
        RunConfig.from_dict({"train": {"labels_known": True}})


def test_unparseable_value_is_argparses_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", "digits", "--out", "x", "--clusters", "ten"])
    assert exit_info.value.code == 2
    assert "--clusters" in capsys.readouterr().err


def test_missing_data_file_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "nowhere.npz"
    out = str(tmp_path / "run")
    code = main(["train", "--data", str(missing), "--clusters", "2", "--out", out, "--no-plots"])
    err = capsys.readouterr().err
    assert code == 2
    assert str(missing) in err
    assert len(err.strip().splitlines()) == 1


def test_missing_data_exits_2_in_a_real_process(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pyro_gmvae", "train", "--data", "nope.csv", "--clusters", "3"]
        + ["--out", "r"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "nope.csv" in done.stderr
    assert "Traceback" not in done.stderr


def test_new_run_without_clusters_exits_2_saying_how_to_choose_k(table, tmp_path, capsys):
    """K=10 fitted silently to data with fewer clusters misleads (iris: accuracy 0.54)."""
    out = tmp_path / "run"
    argv = fast_args(table, out, "--epochs", "1", "--pretrain-epochs", "0")
    at = argv.index("--clusters")
    del argv[at : at + 2]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("gmvae train: error: --clusters is required for a new run")
    assert "--clusters K" in err
    assert not out.exists()  # refused before anything was written


def test_train_then_resume_with_more_epochs(table, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(fast_args(table, out, "--pretrain-epochs", "1", "--epochs", "1")) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["epochs"] == 2
    assert len(read_metrics(out)) == 2

    # The same command again would overwrite the run: refused.
    assert main(fast_args(table, out, "--pretrain-epochs", "1", "--epochs", "1")) == 2
    assert "--resume" in capsys.readouterr().err

    # Resuming with a different model is refused, naming the flag; the run is untouched.
    before = (out / "checkpoint.pt").read_bytes()
    code = main(["train", "--out", str(out), "--resume", "--clusters", "3", "--no-plots"])
    err = capsys.readouterr().err
    assert code == 2 and "--clusters" in err
    assert (out / "checkpoint.pt").read_bytes() == before

    # More epochs continue the run: flags not given are read from config.json.
    code = main(
        ["train", "--out", str(out), "--resume", "--epochs", "3", "--no-progress", "--no-plots"]
    )
    assert code == 0
    second = json.loads(capsys.readouterr().out)
    assert second["epochs"] == 4
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert [r["phase"] for r in records] == ["pretrain", "svi", "svi", "svi"]
    assert records[1]["loss"] == first["loss"]  # the first run's records are kept
    assert RunConfig.load(out / "config.json").model.clusters == 2


def test_resume_without_a_run_exits_2(tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "none"), "--resume", "--no-plots"])
    err = capsys.readouterr().err
    assert code == 2
    assert "config.json" in err or "checkpoint" in err


def test_resume_and_force_together_are_refused(table, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(fast_args(table, out, "--pretrain-epochs", "0", "--epochs", "1")) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--force", "--no-plots"]) == 2
    assert "--resume and --force" in capsys.readouterr().err


# ------------------------------------------------------------------------------- gmvae select
# Enough training for three blobs in 2-d to be told apart (as in test_selection.py).
SELECT_SHORT = (
    "--seed 2 --pretrain-epochs 30 --anchor-epochs 10 --epochs 60 --hidden 16 --latent-dim 2 "
    "--init gmm --batch-size 32 --lr 0.01 --lr-decay 0.9 --device cpu --no-progress "
    "--anchor-min-steps 320"
).split()


@pytest.fixture(scope="module")
def blobs_csv(tmp_path_factory):
    """200 rows of three well separated 2-d blobs, with a label column, as a CSV."""
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n_samples=200, centers=3, n_features=2, cluster_std=0.5, random_state=2)
    path = tmp_path_factory.mktemp("select") / "blobs.csv"
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header="a,b,label", comments="")
    return path


def select_args(data, out, *clusters: str) -> list[str]:
    return [
        "select",
        "--data",
        str(data),
        "--label-column",
        "label",
        "--out",
        str(out),
        "--clusters",
        *clusters,
        *SELECT_SHORT,
    ]


@pytest.fixture(scope="module")
def selected(blobs_csv, tmp_path_factory):
    """``gmvae select`` over K = 1..4 on the blobs: its exit status, stdout and directory."""
    out = tmp_path_factory.mktemp("select") / "choice"
    done = subprocess.run(
        [sys.executable, "-m", "pyro_gmvae", *select_args(blobs_csv, out, "4", "1", "3", "2")],
        capture_output=True,
        text=True,
        env=__import__("os").environ | {"OMP_NUM_THREADS": "1"},
    )
    return done, out


def test_select_recommends_the_number_of_blobs_and_writes_its_files(selected):
    done, out = selected
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "selection.json").read_text())
    assert record["recommended"] == 3
    assert [row["k"] for row in record["table"]] == [1, 2, 3, 4]
    assert "one standard error" in record["rule"]
    assert record["data"].endswith("blobs.csv") and record["rows"] == 200
    # The flags became the estimator's parameters: its own, or train_options for the rest.
    parameters = record["parameters"]
    assert parameters["random_state"] == 2 and parameters["hidden"] == [16]
    assert parameters["likelihood"] == "gaussian"  # a table, as gmvae train would have it
    assert parameters["init"] == "gmm"
    assert parameters["train_options"] == {"lr_decay": 0.9, "anchor_min_steps": 320}
    # The labels are reported beside each K, never used to choose.
    assert record["table"][2]["accuracy"] == 1.0
    png = (out / "figures" / "selection.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    report = (out / "selection.md").read_text()
    assert "Recommended K = **3**" in report and record["rule"] in report
    # The printed table states the rule in words.
    assert f"recommended K = 3: {record['rule']}" in done.stdout


def test_select_refuses_an_existing_directory(selected, blobs_csv, tmp_path, capsys):
    _, out = selected
    before = (out / "selection.json").read_bytes()
    assert main(select_args(blobs_csv, out, "2", "3")) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("gmvae select: error:") and "--force" in err
    assert (out / "selection.json").read_bytes() == before
    # --force replaces only an earlier selection, never another directory.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(select_args(blobs_csv, other, "2", "3") + ["--force"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "selection.json" in err
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    "clusters, message",
    [
        ([], "--clusters needs"),
        (["0", "2"], "at least 1"),
        (["-3"], "at least 1"),
        (["2", "3", "2"], "repeats [2]"),
        (["3", "161"], "160 training rows"),
    ],
)
def test_select_bad_clusters_exit_2_in_one_line(blobs_csv, tmp_path, capsys, clusters, message):
    out = tmp_path / "choice"
    assert main(select_args(blobs_csv, out, *clusters)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("gmvae select: error:") and message in err
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--heldout-fraction", "1"], "--heldout-fraction"),
        (["--jobs", "0"], "--jobs"),
        (["--latent-dim", "-1"], "--latent-dim"),
        (["--likelihood", "bernoulli"], "--likelihood"),
        (["--init", "nope"], "--init"),
    ],
)
def test_select_impossible_option_exits_2_before_writing(blobs_csv, tmp_path, capsys, extra, flag):
    out = tmp_path / "choice"
    assert main(select_args(blobs_csv, out, "2", "3") + extra) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert flag in err
    assert not out.exists()


def test_select_has_no_labels_known_flag(blobs_csv, tmp_path, capsys):
    # A selection clusters without labels: the flag is not offered, rather than failing late.
    out = tmp_path / "choice"
    with pytest.raises(SystemExit) as exit:
        main(select_args(blobs_csv, out, "2", "3") + ["--labels-known", "4"])
    assert exit.value.code == 2
    assert "unrecognized arguments: --labels-known 4" in capsys.readouterr().err
    assert not out.exists()


def test_gmvae_help_lists_every_subcommand():
    done = subprocess.run(
        [sys.executable, "-m", "pyro_gmvae", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("train", "select", "evaluate", "ppc", "sample"):
        assert command in done.stdout
