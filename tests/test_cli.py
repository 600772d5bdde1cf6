"""The ``byzance`` command line: help, run, bench (invalid/resume/parallel), report, errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass

import pytest

from byzance.cli import QUICKSTART_TOML, main
from byzance.grid import tomllib
from byzance.results import open_db
from byzance.sim import ExperimentConfig

TINY = ["--rounds", "2", "--eval-every", "1", "--batch-size", "8", "--quiet"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_reads_like_the_readme(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for word in ("run", "bench", "report", "examples:", "byzance bench examples/grid.toml"):
        assert word in out
    for command in ("run", "bench", "report"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "usage: byzance " + command in capsys.readouterr().out
    assert run_cli(capsys)[0] == 0  # no command: help


def test_console_script_entry_point() -> None:
    exe = shutil.which("byzance")
    cmd = [exe] if exe else [sys.executable, "-m", "byzance.cli"]
    proc = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("byzance ")


def test_quickstart_config_is_valid_and_fast() -> None:
    data = tomllib.loads(QUICKSTART_TOML)
    rules = data.pop("aggregator")
    assert rules[0] == "average" and len(rules) == 2
    for rule in rules:
        cfg = ExperimentConfig.from_dict({**data, "aggregator": rule})
        cfg.validate()
        assert cfg.dataset == "digits" and cfg.has_attack and cfg.rounds <= 100


def test_run_tiny_with_db(capsys, tmp_path) -> None:
    db = tmp_path / "r.db"
    code, out, err = run_cli(capsys, "run", *TINY, "--db", str(db))
    assert code == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("rule"))
    assert "test accuracy" in lines[header] and "no-attack reference" in lines[header]
    rows = lines[header + 2 : header + 4]
    assert rows[0].split()[:2] == ["average", "ipm(epsilon=4)"]
    assert rows[1].split()[0] == "nnm+trimmed_mean"
    for row in rows:
        acc, ref = float(row.split()[2]), float(row.split()[3])
        assert 0 <= acc <= 1 and 0 <= ref <= 1
    with open_db(db) as conn:
        runs = conn.load_runs("finished")
        assert len(runs) == 4  # 2 rules x (attacked, reference)
        assert sorted(r["config"]["attack"] for r in runs) == ["ipm", "ipm", "none", "none"]
        assert all(r["config"]["rounds"] == 2 for r in runs)
        assert all(len(v) == 2 for v in conn.load_metrics().values())
    # same command again: re-runs and replaces (no duplicate rows)
    assert run_cli(capsys, "run", *TINY, "--db", str(db), "--no-reference")[0] == 0
    with open_db(db) as conn:
        assert len(conn.load_runs()) == 4


def test_run_config_file_and_flag_override(capsys, tmp_path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text(
        'dataset = "digits"\nn_honest = 5\nf = 1\naggregator = "median"\n'
        'attack = "sign_flipping"\nrounds = 50\n'
    )
    code, out, err = run_cli(capsys, "run", str(path), *TINY, "--seed", "3", "--show-config")
    assert code == 0, err
    shown = tomllib.loads(out)
    assert shown["rounds"] == 2 and shown["seed"] == 3 and shown["aggregator"] == "median"
    assert shown["n_honest"] == 5
    # the quickstart's attack parameters (IPM epsilon) do not carry over to another attack
    code, out, _ = run_cli(capsys, "run", "--attack", "sign_flipping", "--show-config")
    assert code == 0 and "attack_params" not in tomllib.loads(out)
    code, out, _ = run_cli(capsys, "run", "--show-config", "--set", "attack_params={epsilon=0.5}")
    assert tomllib.loads(out)["attack_params"] == {"epsilon": 0.5}
    code, out, err = run_cli(capsys, "run", str(path), *TINY, "--no-reference")
    assert code == 0, err
    assert "median" in out and "sign_flipping" in out and "5 honest + 1 Byzantine" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "--set", "lrr=0.1"], "lrr"),
        (["run", "--heterogeneity", "weird"], "heterogeneity"),
        (["run", "--rounds", "0"], "rounds"),
        (
            ["run", "--aggregator", "krum", "--f", "3", "--n-honest", "5"],
            "Krum requires n >= 2f + 3",
        ),
        (["run", "--aggregator", "nope"], "unknown aggregator"),
        (["run", "--set", "oops"], "FIELD=VALUE"),
        (["run", "missing.toml"], "not found"),
        (["run", "--q", "3"], "--q only applies to --engine ray"),
        (["run", "--decentralized", "--agreement", "mda"], "requires n >= 6f + 1"),
        (
            ["bench", "g.toml", "--checkpoint-dir", "c", "--num-cpus", "4"],
            "--checkpoint-dir only applies to --engine ray",
        ),
        (["run", "--checkpoint-every", "5"], "--checkpoint-every only applies to --engine ray"),
        (["bench", "missing.toml"], "not found"),
        (["report", "missing.db"], "not found"),
    ],
)
def test_user_errors_exit_2_with_one_line(capsys, argv, needle) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith("byzance: error: ") and needle in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_ray_engine_missing_is_a_clear_error(capsys) -> None:
    pytest.importorskip("torch")
    try:
        import ray  # noqa: F401
    except ImportError:
        code, _, err = run_cli(capsys, "run", "--engine", "ray", *TINY)
        assert code == 2 and "pip install 'byzance[ray]'" in err
    else:
        pytest.skip("ray is installed")


def test_grid_file_given_to_run(capsys, tmp_path) -> None:
    path = tmp_path / "g.toml"
    path.write_text("[sweep]\nf = [1]\n")
    code, _, err = run_cli(capsys, "run", str(path))
    assert code == 2 and "byzance bench" in err


GRID = """
name = "tiny"
[base]
dataset = "digits"
model = "logreg"
n_honest = 6
rounds = 2
eval_every = 1
batch_size = 8
val_fraction = 0.1
[sweep]
aggregator = ["average", "krum"]
attack = ["none", "sign_flipping"]
f = [1, 2]
lr = [0.05, 0.2]
"""


def test_bench_invalid_resume_report(capsys, tmp_path) -> None:
    grid, db = tmp_path / "grid.toml", tmp_path / "r.db"
    grid.write_text(GRID)
    # krum with f=2 needs n >= 7: 6 honest + 2 Byzantine is fine, attack-free 6 is not
    code, out, err = run_cli(capsys, "bench", str(grid), "--db", str(db))
    assert code == 2
    assert "2 of 16 configs" in err and "--skip-invalid" in err
    assert "grid entry #10 (aggregator='krum', attack='none', f=2, lr=0.05)" in err
    assert not db.exists()  # nothing ran
    code, out, err = run_cli(
        capsys, "bench", str(grid), "--db", str(db), "--skip-invalid", "--dry-run"
    )
    assert code == 0 and "14 to run" in out and not db.exists()
    code, out, err = run_cli(
        capsys,
        "bench",
        str(grid),
        "--db",
        str(db),
        "--skip-invalid",
        "--jobs",
        "1",
        "--set",
        "rounds=1",
    )
    assert code == 0, err
    assert "skipping 2 invalid" in out and "14 finished now" in out
    assert "14/14 runs" in err  # progress bar (non-tty: one line per run)
    # resume: all finished, nothing re-run
    code, out, err = run_cli(
        capsys,
        "bench",
        str(grid),
        "--db",
        str(db),
        "--skip-invalid",
        "--set",
        "rounds=1",
        "--quiet",
    )
    assert code == 0 and "14 already finished, 0 finished now" in out
    with open_db(db) as conn:
        runs = conn.load_runs("finished")
        assert len(runs) == 14 and all(r["config"]["rounds"] == 1 for r in runs)
    out_dir = tmp_path / "rep"
    code, out, err = run_cli(capsys, "report", str(db), "--out", str(out_dir))
    assert code == 0, err
    assert "warning" not in out  # validation split present: selection on validation accuracy
    md = (out_dir / "summary.md").read_text()
    assert "## f=1, heterogeneity=iid" in md and "| krum | lr=" in md
    pngs = sorted(p.name for p in out_dir.glob("*.png"))
    assert "heatmap.png" in pngs and "curves_f-1_heterogeneity-iid.png" in pngs
    assert (out_dir / "summary.csv").read_text().count("\n") == 1 + 14


def _fake_ray(monkeypatch):
    """The real ``ray`` engine (options, checks, run id, CLI flags) with a stand-in ``run``
    that records what it gets and reports one record, like the real one, through
    ``on_metrics`` (the runner writes the database)."""
    from byzance.engines.ray.engine import RayClusterEngine
    from byzance.round.record import RunResult

    calls: list[tuple[object, object]] = []

    def run(self, config, options, on_metrics=None, *, progress=False, **hooks):
        calls.append((config, options))
        rec = {"round": config.rounds, "train_loss": 0.1, "test_accuracy": 0.75}
        rec["missing_workers"] = [{"round": 1, "worker": 2, "reason": "late"}]
        if config.protocol == "decentralized":
            rec.update(test_accuracy=0.625, spread=0.0421)
        on_metrics(rec)
        return RunResult.from_history(config, [rec], 0.1, {})

    monkeypatch.setattr(RayClusterEngine, "run", run)
    return calls


def test_ray_engine_wiring(capsys, tmp_path, monkeypatch) -> None:
    """--engine ray passes --address/--q/--round-timeout as RayOptions; the runner records the
    run under the id the engine keys (config + quorum)."""
    from byzance.engines.ray.options import RayOptions
    from byzance.runner import run_key

    calls = _fake_ray(monkeypatch)
    db = tmp_path / "r.db"
    argv = ["run", *TINY, "--aggregator", "median", "--no-reference", "--engine", "ray"]
    argv += ["--address", "auto", "--q", "11", "--round-timeout", "2.5", "--db", str(db)]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert "engine ray" in out and "0.750" in out
    ((config, options),) = calls
    expected = RayOptions(address="auto", quorum=11, round_timeout=2.5)
    expected.validate()
    assert options == expected
    assert config.aggregator == "median" and config.rounds == 2
    with open_db(db) as conn:
        (run,) = conn.load_runs("finished")
        assert run["engine"] == "ray"
        assert run["run_id"] == run_key(config, "ray", {"quorum": 11}) != run_key(config, "ray")
        assert conn.load_metrics()[run["run_id"]][0]["missing_workers"][0]["worker"] == 2
    # a bench over the same config with the same quorum finds it finished (same id)
    grid = tmp_path / "g.toml"
    grid.write_text(
        '[base]\ndataset = "digits"\nrounds = 2\neval_every = 1\nbatch_size = 8\n'
        'attack = "ipm"\nattack_params = {epsilon = 4.0}\nf = 3\n'
        '[sweep]\naggregator = ["median"]\n'
    )
    code, out, err = run_cli(
        capsys, "bench", str(grid), "--db", str(db), "--engine", "ray", "--q", "11", "--quiet"
    )
    assert code == 0, err
    assert "1 already finished, 0 finished now" in out and len(calls) == 1


def test_ray_option_flags_reach_the_engine(capsys, tmp_path, monkeypatch) -> None:
    calls = _fake_ray(monkeypatch)
    db = tmp_path / "r.db"
    common = [*TINY, "--aggregator", "median", "--no-reference", "--engine", "ray"]
    argv = ["run", *common, "--checkpoint-dir", str(tmp_path / "ck"), "--num-cpus", "8"]
    argv += ["--worker-cpus", "0.5", "--no-spread", "--db", str(db)]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    ((config, options),) = calls
    assert config.aggregator == "median" and config.protocol == "server"
    # --checkpoint-dir alone checkpoints every 10 rounds
    assert options.checkpoint_dir == str(tmp_path / "ck") and options.checkpoint_every == 10
    assert (options.num_cpus, options.worker_cpus, options.spread) == (8, 0.5, False)
    argv = ["run", *common, "--checkpoint-dir", "ck", "--checkpoint-every", "3"]
    assert run_cli(capsys, *argv)[0] == 0 and calls[-1][1].checkpoint_every == 3

    # decentralized: the protocol and its model aggregator are config fields
    calls.clear()
    argv = ["run", *common, "--decentralized", "--num-cpus", "16", "--q", "7", "--db", str(db)]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    ((config, options),) = calls
    assert config.protocol == "decentralized" and options.num_cpus == 16 and options.quorum == 7
    assert config.model_aggregator == "trimmed_mean" and config.equivocate
    assert "decentralized (model aggregator trimmed_mean)" in out
    assert "0.625 (spread 0.0421)" in out
    code, out, err = run_cli(capsys, *argv[:-2], "--model-aggregator", "median")
    assert code == 0 and calls[-1][0].model_aggregator == "median"
    argv2 = ["run", *common, "--protocol", "decentralized", "--checkpoint-dir", "ck"]
    code, out, err = run_cli(capsys, *argv2)
    assert code == 0 and calls[-1][1].checkpoint_every == 10
    assert calls[-1][0].protocol == "decentralized"
    with open_db(db) as conn:
        engines = sorted(r["engine"] for r in conn.load_runs("finished"))
    assert engines == ["ray", "ray-decentralized"]

    # bench: the same decentralized run is found finished (same id), whatever q/CPUs;
    # another model aggregator is another run
    grid = tmp_path / "g.toml"
    grid.write_text(
        '[base]\ndataset = "digits"\nrounds = 2\neval_every = 1\nbatch_size = 8\n'
        'attack = "ipm"\nattack_params = {epsilon = 4.0}\nf = 3\n'
        '[sweep]\naggregator = ["median"]\n'
    )
    bench = ["bench", str(grid), "--db", str(db), "--engine", "ray", "--quiet", "--decentralized"]
    n_calls = len(calls)
    code, out, err = run_cli(capsys, *bench, "--num-cpus", "8", "--worker-cpus", "0.25")
    assert code == 0, err
    assert "1 already finished, 0 finished now" in out and len(calls) == n_calls
    code, out, err = run_cli(capsys, *bench, "--model-aggregator", "mean", "--dry-run")
    assert code == 0 and "1 to run" in out
    code, out, err = run_cli(capsys, *bench, "--model-aggregator", "mean")
    assert code == 0 and "1 finished now" in out and calls[-1][0].model_aggregator == "mean"


def test_run_key_keeps_only_options_that_change_results() -> None:
    from byzance.runner import run_key

    cfg = ExperimentConfig().to_dict()
    base = run_key(cfg, "ray")
    same = {"checkpoint_dir": "ck", "checkpoint_every": 5, "num_cpus": 4, "worker_cpus": 0.5}
    assert run_key(cfg, "ray", {**same, "address": "auto", "round_timeout": 3.0}) == base
    assert run_key(cfg, "ray", {"quorum": 11}) != base
    dec_cfg = {**cfg, "protocol": "decentralized"}
    dec = run_key(dec_cfg, "ray")
    assert dec not in (base, run_key(cfg, "sim"))
    # the quorum only bounds what a node may aggregate: not keyed in the decentralised id
    assert dec == run_key(dec_cfg, "ray", {"quorum": 11, **same})
    assert dec != run_key({**dec_cfg, "model_aggregator": "median"}, "ray")
    # protocol settings do not split runs of a protocol that does not use them
    assert run_key({**cfg, "model_aggregator": "median", "equivocate": False}, "ray") == base
    # the ids runs had before the protocol was a config field (old databases resume)
    assert base == "3c0d316509cc543b" and dec == "75b78b285b0ef4b1"
    assert run_key(cfg, "sim") == "07a521c8162938b3"


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--model-aggregator", "nope"], "ExperimentConfig.model_aggregator: "),
        (["--decentralized", "--checkpoint-every", "5"], "needs a checkpoint_dir"),
        (["--decentralized", "--model-aggregator", "nope"], "model_aggregator: "),
        (["--checkpoint-every", "5"], "needs a checkpoint_dir"),
        (["--num-cpus", "0"], "RayOptions.num_cpus: expected an int >= 1 or None, got 0"),
        (["--worker-cpus", "-1"], "RayOptions.worker_cpus: expected a finite float >= 0"),
        (["--decentralized", "--set", "server_momentum=0.9"], "server_momentum: must be 0"),
        (["--protocol", "gossip"], "ExperimentConfig.protocol: expected one of server"),
        (["--num-cpus", "4"], "Ray instance too small: 13 worker actors x 1 CPU = 13 CPU"),
        (["--checkpoint-dir", __file__ + "/ck"], "RayOptions.checkpoint_dir: "),
    ],
)
def test_ray_option_errors(capsys, tmp_path, monkeypatch, flags, needle) -> None:
    calls = _fake_ray(monkeypatch)
    code, out, err = run_cli(capsys, "run", *TINY, "--engine", "ray", *flags)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not calls


def test_a_new_engine_needs_no_edit_of_the_cli(capsys, tmp_path, monkeypatch) -> None:
    """Registering an engine gives it --engine NAME, flags from its options, checks, run ids
    and the database (the conformance of the interface, end to end through the CLI)."""

    from byzance import engines
    from byzance.engines import registry
    from byzance.validation import Integer

    @dataclass
    class EchoOptions:
        repeat: int = engines.option(1, Integer(low=1), "times each round is echoed")

    seen = []

    class Echo(engines.Engine):
        name = "echo"
        summary = "the simulator, echoing"
        Options = EchoOptions

        def id_fields(self, config, options):
            return {"echo_repeat": options.repeat}

        def run(self, config, options, on_metrics=None, *, progress=False):
            seen.append(options.repeat)
            return engines.get("sim").run(config, None, on_metrics)

    monkeypatch.setattr(registry, "_ENGINES", dict(registry._ENGINES))
    before = engines.available()
    engines.register(Echo)
    assert engines.available() == [*before, "echo"]
    db = tmp_path / "r.db"
    argv = ["run", *TINY, "--aggregator", "median", "--no-reference", "--engine", "echo"]
    code, out, err = run_cli(capsys, *argv, "--repeat", "3", "--db", str(db))
    assert code == 0, err
    assert seen == [3]
    assert "engine echo" in out
    with open_db(db) as conn:
        (run,) = conn.load_runs("finished")
        assert run["engine"] == "echo"
        assert len(conn.load_metrics()[run["run_id"]]) == 2  # rounds 1 and 2
    code, out, err = run_cli(capsys, "run", *TINY, "--engine", "echo", "--repeat", "0")
    assert code == 2 and "EchoOptions.repeat: expected an int >= 1, got 0" in err
    code, out, err = run_cli(capsys, "run", *TINY, "--repeat", "2")
    assert code == 2 and "--repeat only applies to --engine echo" in err
    code, out, err = run_cli(capsys, "run", *TINY, "--engine", "echo", "--q", "2")
    assert code == 2 and "--q only applies to --engine ray" in err
    code, out, err = run_cli(capsys, "run", *TINY, "--engine", "echo", "--decentralized")
    assert code == 2 and "engine 'echo' does not run protocol 'decentralized'" in err
    assert "engines that run it: sim, ray" in err


def test_real_decentralized_run_shows_spread(capsys, tmp_path) -> None:
    """A real, tiny decentralised Ray run: 15-25 s on 2 loaded cores, mostly actor start-up."""
    pytest.importorskip("ray")
    db = tmp_path / "r.db"
    argv = ["run", "--dataset", "digits", "--model", "logreg", "--n-honest", "3", "--f", "1"]
    argv += ["--aggregator", "trimmed_mean", "--attack", "alie", "--rounds", "3"]
    argv += ["--eval-every", "3", "--batch-size", "8", "--no-reference", "--quiet"]
    argv += ["--engine", "ray", "--decentralized", "--num-cpus", "4", "--db", str(db)]
    argv += ["--round-timeout", "20"]  # a stuck node fails the run instead of hanging the test
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith("trimmed_mean"))
    acc, spread = row.split()[2], row.split("(spread ")[1].split(")")[0]
    # ALIE forged per recipient (equivocation) pulls the honest models apart: spread > 0
    assert 0 <= float(acc) <= 1 and float(spread) > 0
    from byzance.runner import run_key

    with open_db(db) as conn:
        (run,) = conn.load_runs("finished")
        assert run["engine"] == "ray-decentralized"
        # the id the CLI computes (resume, bench) is the one the engine recorded
        assert run["run_id"] == run_key(run["config"], "ray")
        (records,) = conn.load_metrics().values()
        assert [r["round"] for r in records] == [3]
