"""Checkpoints hold tensors and plain data only: a crafted file cannot run code on resume, and
an attack's state round-trips through ``state_dict`` (the attack object is never stored)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from byzance import aggregators, attacks
from byzance.engines.ray.checkpoints import (
    load_checkpoint_file,
    read_checkpoint,
    save_checkpoint_file,
)
from byzance.engines.ray.options import RayOptions
from byzance.engines.workload import AttackForger
from byzance.round.setup import Setup
from byzance.sim import ExperimentConfig

CALLS: list[str] = []


def record_call(what: str) -> None:
    CALLS.append(what)


class Evil:
    """Unpickling this calls ``record_call`` (and, pickled alone, runs a shell command)."""

    def __init__(self, marker: Path | None = None) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        if self.marker is not None:
            return (os.system, (f"touch {self.marker}",))
        return (record_call, ("executed",))


def tiny(attack: str = "alie", aggregator: str = "trimmed_mean", **kw) -> ExperimentConfig:
    base = dict(n_honest=4, f=1, attack=attack, aggregator=aggregator, rounds=3, batch_size=4)
    return ExperimentConfig(**{**base, **kw})


def server_checkpoint(cfg: ExperimentConfig, rounds: int = 2) -> tuple[dict, Setup]:
    """A checkpoint as the Ray server engine writes it, after ``rounds`` rounds."""
    setup = Setup(cfg)
    server, adversary, workers = setup.make_server(), setup.make_adversary(), setup.make_workers()
    honest = torch.randn(cfg.n_honest, setup.dim, generator=torch.Generator().manual_seed(0))
    for t in range(1, rounds + 1):
        server.step(torch.cat([honest, adversary.forge(honest)]), t)
    state = {
        "round": rounds,
        "server": server.state_dict(),
        "workers": {0: workers.state_dict(), cfg.n_honest: adversary.state_dict()},
        "history": [{"round": 2, "train_loss": 0.5, "test_accuracy": 0.9, "missing_workers": []}],
        "missing_log": [{"round": 1, "worker": 2, "reason": "timeout"}],
        "extra": {},
    }
    return state, setup


# ----------------------------------------------------------------------------- refused files
@pytest.mark.parametrize("how", ["torch.save", "pickle", "nested"])
def test_code_in_a_checkpoint_is_refused_and_not_run(tmp_path: Path, how: str) -> None:
    CALLS.clear()
    marker = tmp_path / "pwned"
    path = tmp_path / "run.ckpt"
    if how == "torch.save":
        torch.save({"round": 1, "server": Evil(marker)}, path)
    elif how == "pickle":
        path.write_bytes(pickle.dumps({"round": 1, "x": Evil(marker)}))
    else:  # deep inside an otherwise valid checkpoint, calling a function of ours
        state, _ = server_checkpoint(tiny())
        state["workers"][4]["attack"] = Evil()
        torch.save(state, path)
    with pytest.raises(ValueError, match=rf"{path} is not a valid byzance checkpoint") as info:
        read_checkpoint(path)
    assert "\n" not in str(info.value)
    assert not marker.exists() and CALLS == []
    options = RayOptions(checkpoint_dir=str(tmp_path), resume=True)
    with pytest.raises(ValueError, match="not a valid byzance checkpoint"):
        load_checkpoint_file(options, "run")
    assert not marker.exists() and CALLS == []


def test_damaged_or_foreign_checkpoints_are_refused(tmp_path: Path) -> None:
    cases = {
        "junk": b"not a checkpoint",
        "empty": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=f"{name} is not a valid byzance checkpoint"):
            read_checkpoint(tmp_path / name)
    torch.save([1, 2, 3], tmp_path / "list")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other")
    torch.save(
        {"round": -1, "nodes": {}, "history": [], "missing_since": [], "elapsed": 0.0},
        tmp_path / "negative",
    )
    for name, why in (("list", "holds list"), ("other", "holds .'weights'."), ("negative", "-1")):
        with pytest.raises(ValueError, match=f"{name} is not a valid byzance checkpoint.*{why}"):
            read_checkpoint(tmp_path / name)
    state, _ = server_checkpoint(tiny())
    save_checkpoint_file(tmp_path / "good.ckpt", state)
    data = (tmp_path / "good.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.ckpt is not a valid byzance checkpoint"):
        read_checkpoint(tmp_path / "cut.ckpt")


def test_no_checkpoint_or_no_resume_reads_nothing(tmp_path: Path) -> None:
    (tmp_path / "run.ckpt").write_bytes(b"junk")
    assert (
        load_checkpoint_file(RayOptions(checkpoint_dir=str(tmp_path), resume=False), "run") is None
    )
    assert load_checkpoint_file(RayOptions(checkpoint_dir=str(tmp_path)), "other") is None
    assert load_checkpoint_file(RayOptions(), "run") is None


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize(
    ("attack", "aggregator"),
    [
        ("alie", "trimmed_mean"),
        ("mimic", "trimmed_mean"),
        ("gaussian", "centered_clipping"),
        ("optimal", "nnm+trimmed_mean"),
        ("mimic", "bucketing+average"),
    ],
)
def test_checkpoint_round_trip_restores_the_run(tmp_path: Path, attack: str, aggregator: str):
    cfg = tiny(attack, aggregator)
    state, setup = server_checkpoint(cfg)
    path = tmp_path / "run.ckpt"
    save_checkpoint_file(path, state)
    back = read_checkpoint(path)
    assert back["round"] == 2 and back["history"] == state["history"]
    assert back["missing_log"] == state["missing_log"]
    # a fresh set-up (the attack rebuilt from the config) resumes exactly where it stopped
    fresh = Setup(cfg)
    server, adversary = fresh.make_server(), fresh.make_adversary()
    server.load_state_dict(back["server"])
    adversary.load_state_dict(back["workers"][cfg.n_honest])
    old_server, old_adversary = setup.make_server(), setup.make_adversary()
    old_server.load_state_dict(state["server"])
    old_adversary.load_state_dict(state["workers"][cfg.n_honest])
    honest = torch.randn(cfg.n_honest, setup.dim, generator=torch.Generator().manual_seed(1))
    for t in (3, 4):
        a, b = old_adversary.forge(honest), adversary.forge(honest)
        assert torch.equal(a, b)
        assert torch.equal(
            old_server.step(torch.cat([honest, a]), t), server.step(torch.cat([honest, b]), t)
        )
    assert torch.equal(old_server.params, server.params)


@pytest.mark.parametrize("name", ["mimic", "gaussian", "optimal", "alie", "sign_flipping"])
def test_attack_state_dict_is_plain_data_and_resumes(name: str) -> None:
    kw = {"aggregator": aggregators.create("trimmed_mean", f=2)} if name == "optimal" else {}
    make = lambda: attacks.create(name, **kw)  # noqa: E731
    a = make()
    g = torch.Generator().manual_seed(0)
    rounds = [torch.randn(6, 40, generator=g) for _ in range(5)]
    for x in rounds[:2]:
        a.forge(x, 2)
    state = a.state_dict()

    def plain(v) -> bool:
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x) for k, x in v.items())
        return v is None or isinstance(v, (bool, int, float, str, torch.Tensor))

    assert plain(state)
    b = make()
    b.load_state_dict(state)
    for x in rounds[2:]:
        assert torch.equal(a.forge(x, 2), b.forge(x, 2))


def test_stateless_attack_refuses_a_foreign_state() -> None:
    with pytest.raises(ValueError, match="ALittleIsEnough keeps no state"):
        attacks.create("alie").load_state_dict({"generator": torch.zeros(3)})


def test_attack_forger_state_is_the_attack_state() -> None:
    forger = AttackForger(attacks.create("gaussian"), 0, 2)
    x = torch.zeros(3, 5).numpy()
    forger.forge(x, 1)
    state = forger.state_dict()
    assert set(state) == {"attack"} and set(state["attack"]) == {"generator"}
    other = AttackForger(attacks.create("gaussian"), 0, 2)
    other.load_state_dict(state)
    assert (forger.forge(x, 2) == other.forge(x, 2)).all()
