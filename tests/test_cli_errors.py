"""Every bad input is one line: each entry point walked with wrong types, bad ranges,
non-finite numbers, unknown options and names that would leave the root.

The entry points run in-process (their ``cli()`` under a patched ``sys.argv``; validation and
composition fail before any work), a few as real commands. Each must end with exactly one
``error: <key>: ...`` line on stderr and exit status 2.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, cli_env, compose_cfg
from hydra import compose, initialize_config_dir

from weightspace.analysis.run import cli as analyze_cli
from weightspace.autoencoder.train import cli as train_cli
from weightspace.config import CONF_DIR
from weightspace.errors import ConfigError
from weightspace.schema import validate
from weightspace.symmetry.derive import cli as canonicalize_cli
from weightspace.zoo.generate import cli as generate_cli
from weightspace.zoo.generate import generate

CLIS = {
    "generate": generate_cli,
    "canonicalize": canonicalize_cli,
    "train_autoencoder": train_cli,
    "analyze": analyze_cli,
}
# Hydra leaves the test process's logging alone with these.
QUIET = ["hydra/job_logging=none", "hydra/hydra_logging=none"]


def run_entry(entry: str, root, *overrides: str, capsys, monkeypatch) -> tuple[int, str]:
    """Run an entry point's ``cli()`` in-process; returns (exit status, stderr)."""
    monkeypatch.setenv("WEIGHTSPACE_ROOT", str(root))
    monkeypatch.setattr(sys, "argv", [entry, *overrides, *QUIET])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        CLIS[entry]()
    return stop.value.code, capsys.readouterr().err


def assert_one_line(err: str, key: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {key}: "), err


# --------------------------------------------------------------------------- the table
BAD = {
    "generate": [
        (["zoo.size=abc"], "zoo.size", "an integer"),
        (["zoo.hparams.lr=abc"], "zoo.hparams.lr", "a finite number"),
        (["zoo.hparams.epochs=ten"], "zoo.hparams.epochs", "an integer"),
        (["model.widths=abc"], "model.widths", "a list"),
        (["model.hidden=32"], "model.hidden", "a list"),
        (["zoo.seed=-1"], "zoo.seed", ">= 0"),
        (["zoo.hparams.lr=inf"], "zoo.hparams.lr", "finite"),
        (["zoo.hparams.lr=nan"], "zoo.hparams.lr", "finite"),
        (["zoo.hparams.lr=-1"], "zoo.hparams.lr", "> 0"),
        (["zoo.hparams.lr=[0.1,abc]"], "zoo.hparams.lr", "a list of them"),
        (["zoo.hparams.lr={dist: loguniform, low: 0, high: 1}"], "zoo.hparams.lr", "> 0"),
        (["zoo.hparams.init=constant", "zoo.hparams.init_value=nan"], "zoo.hparams.init_value", ""),
        (["zoo.hparams.momentum=1"], "zoo.hparams.momentum", "< 1"),
        (["zoo.shard_size=0"], "zoo.shard_size", ">= 1"),
        (["zoo.checkpoints=[0,50]"], "zoo.checkpoints", "past the last epoch 10"),
        (["zoo.name=../../escaped"], "zoo.name", "stay under paths.root_dir"),
        (["zoo.name=a/b"], "zoo.name", "folder name"),
        (["backend=nope"], "backend", "one of"),
        (["progress=maybe"], "progress", "true or false"),
    ],
    "canonicalize": [
        ([], "parent", "required"),
        (["parent=z", "transform.max_iter=abc"], "transform.max_iter", "an integer"),
        (["parent=z", "transform.tol=inf"], "transform.tol", "finite"),
        (["parent=z", "transform.kind=nope"], "transform.kind", "one of"),
        (["parent=z", "transform.epoch=-2"], "transform.epoch", ">= 0"),
    ],
    "train_autoencoder": [
        (["zoo=z", "model.lr=abc"], "model.lr", "a finite number"),
        (["zoo=z", "model.lr=-1"], "model.lr", "> 0"),
        (["zoo=z", "model.lr=nan"], "model.lr", "finite"),
        (["zoo=z", "model.latent_dim=abc"], "model.latent_dim", "an integer"),
        (["zoo=z", "model.latent_dim=0"], "model.latent_dim", ">= 1"),
        (["zoo=z", "data.batch_size=0"], "data.batch_size", ">= 1"),
        (["zoo=z", "data.fractions=[0.5,0.5]"], "data.fractions", "a list of 3"),
        (["zoo=z", "seed=-3"], "seed", ">= 0"),
        (["zoo=z", "trainer.max_epochs=ten"], "trainer.max_epochs", "an integer"),
        (
            ["zoo=z", "encoder=transformer", "model.encoder.n_heads=abc"],
            "model.encoder.n_heads",
            "",
        ),
        (["zoo=z", "model.decoder.dropout=2"], "model.decoder.dropout", "< 1"),
        (
            ["zoo=z", "encoder=nfn", "model.encoder.canonical=scale"],
            "model.encoder.canonical",
            "true or false or one of sign",
        ),
    ],
    "analyze": [
        (["zoo=z", "name=../x"], "name", "stay under paths.root_dir"),
        (["zoo=z", "seed=abc"], "seed", "an integer"),
        (["zoo=z", "runs_differ.n_members=1"], "runs_differ.n_members", ">= 2"),
        (["zoo=z", "figure.dpi=0"], "figure.dpi", ">= 1"),
    ],
}
CASES = [(entry, ov, key, what) for entry, cases in BAD.items() for ov, key, what in cases]


def _compose(entry: str, root, *overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(entry, overrides=[*overrides, f"paths.root_dir={root}"])


@pytest.mark.parametrize(("entry", "overrides", "key", "what"), CASES)
def test_validate_names_the_key_the_value_and_what_was_expected(
    entry, overrides, key, what, tmp_path
):
    with pytest.raises(ConfigError) as err:
        validate(_compose(entry, tmp_path, *overrides), entry)
    msg = str(err.value)
    assert msg.startswith(f"{key}: ") and "\n" not in msg
    assert what in msg
    given = dict(o.split("=", 1) for o in overrides)
    if key in given and given[key][:1] not in "[{":  # the value given is quoted back
        assert f"{key}: {given[key]}" in msg.replace("'", "")


@pytest.mark.parametrize(("entry", "overrides", "key", "what"), CASES)
def test_every_entry_point_prints_one_line_and_exits_2(
    entry, overrides, key, what, tmp_path, capsys, monkeypatch
):
    code, err = run_entry(entry, tmp_path, *overrides, capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2
    assert_one_line(err, key)
    assert not (tmp_path / "zoos").exists()  # nothing was made


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


AE_PRESETS = _options("experiment/autoencoder")
PRESETS = [
    ("generate", [f"experiment=zoo/{p}" for p in _options("experiment/zoo")]),
    (
        "train_autoencoder",
        [f"experiment=autoencoder/{p}" for p in AE_PRESETS],
    ),
    ("analyze", [f"experiment=analysis/{p}" for p in _options("experiment/analysis")]),
]


@pytest.mark.parametrize("entry", list(CLIS))
def test_defaults_presets_and_debug_fast_pass_validation(entry, tmp_path):
    """The shipped configs are valid: defaults, every preset, debug=fast, every encoder."""
    base = {"canonicalize": ["parent=z"], "train_autoencoder": ["zoo=z"], "analyze": ["zoo=z"]}
    extra = dict(PRESETS).get(entry, [])
    if entry == "train_autoencoder":
        extra += [f"encoder={e}" for e in _options("encoder")]
        # documented in docs/results.md: the learned coordinates alone; several zoos
        extra += ["model.features.input=false", "zoo=[a,b,c]"]
    for option in [None, "debug=fast", *extra]:
        overrides = [*base.get(entry, []), *([option] if option else [])]
        validate(_compose(entry, tmp_path, *overrides), entry)


@pytest.mark.parametrize(
    "overrides",
    [
        ["encoder=nfn", "model.encoder.canonical=sign"],
        ["encoder=graph", "model.encoder.symmetry=sign"],
    ],
)
def test_the_sign_only_frame_passes_validation(overrides, tmp_path):
    validate(_compose("train_autoencoder", tmp_path, "zoo=z", *overrides), "train_autoencoder")


def test_debug_fast_shrinks_every_entry_point(tmp_path):
    assert _compose("generate", tmp_path, "debug=fast").zoo.size == 8
    assert _compose("canonicalize", tmp_path, "parent=z", "debug=fast").transform.max_iter == 5
    assert _compose("train_autoencoder", tmp_path, "zoo=z", "debug=fast").trainer.max_epochs == 1
    assert _compose("analyze", tmp_path, "zoo=z", "debug=fast").runs_differ.n_members == 4
    # Without it, the defaults as they were.
    assert _compose("generate", tmp_path).zoo.size == 64
    assert _compose("train_autoencoder", tmp_path, "zoo=z").trainer.max_epochs == 50


# --------------------------------------------------------------------------- composition
@pytest.mark.parametrize(
    ("entry", "overrides", "key"),
    [
        ("generate", ["debug=nope"], "debug"),
        ("generate", ["task=nope"], "task"),
        ("train_autoencoder", ["zoo=z", "encoder=nope"], "encoder"),
        ("train_autoencoder", ["zoo=z", "canon=nope"], "canon"),
        ("analyze", ["experiment=analysis/nope"], "experiment/analysis"),
        ("generate", ["zoo.nokey=3"], "Could not override 'zoo.nokey'"),
        ("generate", ["zoo.size=[1"], "zoo.size=[1"),
    ],
)
def test_unknown_options_and_malformed_overrides_are_one_line(
    entry, overrides, key, tmp_path, capsys, monkeypatch
):
    code, err = run_entry(entry, tmp_path, *overrides, capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}"), err
    if "unknown option" in lines[0]:
        assert "choose from" in lines[0]


# --------------------------------------------------------------------------- with a zoo
@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """A root with two zoos: ``tiny`` (8 members) and ``pair`` (2 members)."""
    root = tmp_path_factory.mktemp("cli_root")
    generate(compose_cfg(root, "zoo.name=tiny"))
    generate(compose_cfg(root, "zoo.name=pair", "zoo.size=2", "zoo.shard_size=2"))
    return root


def test_autoencoder_on_a_two_member_zoo_is_refused_before_training(tiny_root, capsys, monkeypatch):
    code, err = run_entry(
        "train_autoencoder",
        tiny_root,
        "zoo=pair",
        "debug=fast",
        capsys=capsys,
        monkeypatch=monkeypatch,
    )
    assert code == 2
    assert_one_line(err, "zoo")
    assert str(tiny_root / "zoos" / "pair") in err and "at least 3" in err
    assert not list((tiny_root / "outputs").rglob("*.ckpt"))  # no training happened


def test_ckpt_path_must_be_a_checkpoint(tiny_root, tmp_path, capsys, monkeypatch):
    fake = tmp_path / "last.ckpt"
    fake.write_text("not a checkpoint")
    for value, words in ((fake, "is not a checkpoint"), (tmp_path / "none.ckpt", "not a file")):
        code, err = run_entry(
            "train_autoencoder",
            tiny_root,
            "zoo=tiny",
            f"ckpt_path={value}",
            capsys=capsys,
            monkeypatch=monkeypatch,
        )
        assert code == 2 and words in err
        assert_one_line(err, "ckpt_path")


def test_canonicalize_resolves_a_zoo_name_like_every_entry_point(tiny_root, capsys, monkeypatch):
    monkeypatch.setenv("WEIGHTSPACE_ROOT", str(tiny_root))
    monkeypatch.setattr(sys, "argv", ["canonicalize", "parent=tiny", "debug=fast", *QUIET])
    canonicalize_cli()  # no SystemExit: it worked
    assert (tiny_root / "zoos" / "tiny-canonical" / "manifest.json").exists()
    code, err = run_entry(
        "canonicalize", tiny_root, "parent=nowhere", capsys=capsys, monkeypatch=monkeypatch
    )
    assert code == 2
    assert_one_line(err, "parent")
    assert str(tiny_root / "zoos" / "nowhere") in err


# --------------------------------------------------------------------------- commands
@pytest.mark.slow
def test_commands_print_one_line_exit_2_and_log_to_their_hydra_log(tmp_path):
    def run(script: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(REPO / "scripts" / script), *args],
            env=cli_env(tmp_path),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )

    for script, args, key in (
        ("generate_zoo.py", ["zoo.size=abc"], "zoo.size"),
        ("train_autoencoder.py", ["zoo=z", "encoder=nope"], "encoder"),
    ):
        proc = run(script, *args)
        assert proc.returncode == 2, proc.stderr
        assert_one_line(proc.stderr, key)

    ok = run("generate_zoo.py", "debug=fast")
    assert ok.returncode == 0, ok.stderr
    assert "members: 8 (8 trained now" in ok.stdout  # the summary the README shows
    logs = [p.read_text() for p in (tmp_path / "outputs" / "generate").glob("*/generate.log")]
    assert any("8 trained now, 0 diverged" in text for text in logs), logs
