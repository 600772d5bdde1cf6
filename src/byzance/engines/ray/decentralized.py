r"""Decentralised Byzantine-resilient SGD on Ray: no trusted server, one model per honest node.

Following El-Mhamdi, Farhadkhani, Guerraoui, Guirguis, Hoang, Rouault, "Collaborative Learning
in the Jungle (Decentralized, Byzantine, Heterogeneous, Asynchronous and Nonconvex Learning)",
NeurIPS 2021, and ByzSGD (El-Mhamdi, Guerraoui, Guirguis, Hoang, Rouault, "Genuinely
Distributed Byzantine Machine Learning", PODC 2020): ``n = h + f`` nodes on a complete graph,
the ``h`` honest ones each hold a model :math:`\theta_i` (all start from the same
:math:`\theta_0`) and a momentum :math:`m_i`. Round ``t`` at honest node ``i``:

1. local momentum on its own model and shard:
   :math:`m_i \leftarrow \beta m_i + (1 - \beta) g_i(\theta_i)`;
2. gradient exchange: ``i`` broadcasts :math:`m_i` and aggregates **its own vector first**,
   then the other honest nodes' vectors (by node id) and the Byzantine ones:
   :math:`\hat g_i = F([m_i, m_{j \ne i}, b_{1 \to i}, \dots, b_{f \to i}])` with the
   configured rule ``F`` (``ExperimentConfig.aggregator``, built with ``f``; e.g. MoNNA,
   whose reference is row 0 = the node's own vector, or ``nnm+trimmed_mean``);
3. local step: :math:`\theta_i^{+} = \theta_i - \gamma_t (\hat g_i + \lambda \theta_i)`
   (lr schedule :math:`\gamma_t`, weight decay :math:`\lambda`);
4. model exchange (the contraction step of ByzSGD / averaging agreement of the jungle paper):
   :math:`\theta_i \leftarrow F_{\mathrm{model}}([\theta_i^{+}, \theta_{j \ne i}^{+},
   b'_{1 \to i}, \dots])` with ``model_aggregator`` (default coordinate-wise trimmed mean).

Each rule keeps its state across a node's rounds (centered clipping starts from the node's
previous aggregate, bucketing draws from its own generator), as at the trusted server: a node
runs the server step of ``byzance.round`` on its own model.

Byzantine nodes are omniscient and may **equivocate** (send different vectors to different
peers): each forges :math:`a_k` = row ``k`` of ``attack(honest vectors, f)`` and, with the
config's ``equivocate``, sends node ``i`` :math:`v_i + (a_k - \bar v)`, the attack's
deviation re-anchored at ``i``'s own vector :math:`v_i` (so it looks close to each recipient);
without equivocation every peer gets :math:`a_k`. A node whose vector of a phase does not
arrive within ``round_timeout`` is left out of that round (its model unchanged), recorded in
``missing_workers``; each rule is checked on the smallest number of vectors a node may
aggregate, ``q = n - f``, before anything runs.

Checkpoints: with ``RayOptions.checkpoint_dir``, every ``checkpoint_every`` rounds (and at the
last round) every node's state (honest: :math:`\theta_i`, momentum, its rules' state; Byzantine:
the attack and its RNG), the history and the missing nodes since the last record are saved
atomically as ``<checkpoint_dir>/<run id>.ckpt`` (the run id covers the config, with
``model_aggregator`` and ``equivocate``). Started again with a checkpoint there (and
``RayOptions.resume``), the run goes on after the checkpointed round, and the results DB's
records are rewritten up to it; the rest of the run is the one an uninterrupted run would have done.

Metrics: ``test_accuracy`` is the mean over honest nodes (``test_accuracy_min`` / ``_max``
too) and ``spread`` the honest models' diameter :math:`\max_{i,j} \|\theta_i - \theta_j\|`.
With ``attack="none"`` and averaging for both rules, all models stay equal and the run is the
simulator's (centralised) SGD with worker momentum.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from byzance.engines.ray.actors import NodeActor
from byzance.engines.ray.checkpoints import (
    checkpoint_path,
    gather_states,
    load_checkpoint_file,
    save_checkpoint_file,
)
from byzance.engines.ray.cluster import check_resources, connect, kill_actors, start_actors
from byzance.engines.ray.exchange import evaluation_record, honest_params, run_round
from byzance.engines.ray.nodes import EquivocatingForger, NodeCore
from byzance.engines.ray.options import RayOptions
from byzance.round.record import RunResult

log = logging.getLogger("byzance.engines.ray")


@dataclass
class _Plan:
    """A checked decentralised run: ``h`` honest and ``f`` Byzantine nodes, each honest one
    aggregating at least ``q`` vectors with its two rules."""

    config: Any
    options: RayOptions
    h: int
    f: int
    q: int

    @property
    def n(self) -> int:
        return self.h + self.f


def check_decentralized(config: Any, options: RayOptions) -> _Plan:
    """Check everything checkable without Ray: no server momentum, both rules on q, a
    gradient attack (the nodes forge per recipient)."""
    if config.server_momentum:
        raise ValueError(
            "ExperimentConfig.server_momentum: must be 0 with protocol decentralized "
            "(there is no server)"
        )
    if getattr(config, "agreement", "none") != "none":  # byzance.sim.decentralized runs it
        raise ValueError(
            f"ExperimentConfig.agreement: the averaging agreement ({config.agreement!r}) runs "
            "on the sim engine only; use agreement='none' on ray"
        )
    h, f = config.n_honest, (config.f if config.has_attack else 0)
    n = h + f
    q = n - config.f if options.quorum is None else options.quorum
    grad_rule = config.build_aggregator()
    model_rule = config.build_model_aggregator()
    for label, rule in (("aggregator", grad_rule), ("model_aggregator", model_rule)):
        try:
            rule.check(q)
        except ValueError as exc:
            raise ValueError(
                f"decentralized mode: the {label} cannot run on the q={q} vectors a node may "
                f"aggregate (n={n} nodes, f={config.f}): {exc}"
            ) from exc
    if config.has_attack and not hasattr(config.build_attack(grad_rule), "forge"):
        raise ValueError(
            f"decentralized mode supports gradient attacks (with forge), not {config.attack!r}"
        )
    return _Plan(config, options, h, f, q)


def run_nodes(
    config: Any,
    options: RayOptions,
    rid: str,
    on_metrics: Callable[[dict[str, Any]], None] | None,
    progress: bool,
    before_round: Callable[[list[Any], int], None] | None,
) -> RunResult:
    """The decentralised run on Ray (checked by ``check_decentralized``); ``rid`` names its
    checkpoint. Records go to ``on_metrics``, those recovered from a checkpoint first."""
    import ray

    from byzance.progress import RoundProgress
    from byzance.round.setup import Setup

    plan = check_decentralized(config, options)
    started = connect(options)
    actors: list[Any] = []
    bar = RoundProgress(config.rounds, enabled=progress)

    def record(rec: dict[str, Any]) -> None:
        bar.update(rec["round"], rec)
        if on_metrics is not None:
            on_metrics(rec)

    start = time.perf_counter()
    try:
        check_resources(plan.n, options)
        setup = Setup(config)
        actors = _start_nodes(plan, setup)
        history = _run_rounds(plan, setup, actors, rid, record, before_round)
        thetas = honest_params(actors, plan.h)
        seconds = time.perf_counter() - start
    finally:
        bar.close()
        kill_actors(actors)
        if started and ray.is_initialized():
            ray.shutdown()
    return RunResult.from_history(
        config, history, seconds, {"rounds": float(config.rounds)}, params=thetas
    )


def _start_nodes(plan: _Plan, setup: Any) -> list[Any]:
    """One ``NodeActor`` per node (honest ``NodeCore``s, then ``EquivocatingForger``s), up."""
    from byzance.engines.ray.workload import ForgerCore, WorkerCore

    config, options = plan.config, plan.options
    theta0 = setup.params0.detach().cpu()
    cores: list[Any] = []
    for i in range(plan.h):
        server = setup.make_server(theta0.clone())
        server.momentum = 0.0  # checked: a node has no server momentum
        worker = WorkerCore(setup.make_workers([i]), theta0)
        cores.append(NodeCore(worker, i, server, config.build_model_aggregator()))
    adversary = setup.make_adversary()
    cores += [
        EquivocatingForger(ForgerCore(adversary, j), config.equivocate) for j in range(plan.f)
    ]
    args = [(c, i, options.torch_threads) for i, c in enumerate(cores)]
    actors, _ = start_actors(
        NodeActor, options, args, label="node", max_restarts=0, resources_hint=False
    )
    return actors


def _run_rounds(
    plan: _Plan,
    setup: Any,
    actors: list[Any],
    rid: str,
    record: Callable[[dict[str, Any]], None],
    before_round: Callable[[list[Any], int], None] | None,
) -> list[dict[str, Any]]:
    """The rounds after the checkpoint (if any; else all): records, checkpoints; the history."""
    config, options = plan.config, plan.options
    timeout = options.round_timeout
    history, since, first, elapsed = _resume(plan, actors, rid)
    for rec in history:  # recovered from the checkpoint: the runner rewrites them
        record(rec)
    t_start = time.perf_counter() - elapsed  # ``time`` goes on from the checkpoint's
    for t in range(first, config.rounds + 1):
        if before_round is not None:
            before_round(actors, t)
        missing, round_losses = run_round(actors, plan.h, plan.f, plan.q, t, timeout)
        for w, reason in sorted(missing.items()):
            since.append({"round": t, "worker": w, "reason": reason})
        if t % config.eval_every == 0 or t == config.rounds:
            rec = evaluation_record(setup, actors, plan.h, t, round_losses, t_start, since)
            since = []
            history.append(rec)
            record(rec)
        every = options.checkpoint_every
        if every and (t % every == 0 or t == config.rounds):
            elapsed = time.perf_counter() - t_start
            path = checkpoint_path(options, rid)
            _save_checkpoint(path, actors, timeout, t, history, since, elapsed)
    return history


def _resume(
    plan: _Plan, actors: list[Any], rid: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int, float]:
    """``(history, missing since the last record, first round, elapsed seconds)``: from the
    run's checkpoint (its nodes' states restored), or those of a fresh run."""
    import ray

    resumed = load_checkpoint_file(plan.options, rid)
    if resumed is None:
        return [], [], 1, 0.0
    n = plan.n
    ray.get([actors[i].set_state.remote(s) for i, s in resumed["nodes"].items() if i < n])
    log.warning("resumed run %s from its checkpoint at round %d", rid, resumed["round"])
    history = list(resumed["history"])
    since = list(resumed["missing_since"])
    return history, since, int(resumed["round"]) + 1, float(resumed["elapsed"])


def _save_checkpoint(
    path: Path | None,
    actors: list[Any],
    timeout: float,
    round_: int,
    history: list[dict[str, Any]],
    since: list[dict[str, Any]],
    elapsed: float,
) -> None:
    """Every node's state (a node that does not answer within ``timeout`` is left out and
    keeps its initial state on resume), the history and the missing nodes since the last
    record, written atomically to ``path``."""

    def left_out(i: int, exc: Any) -> None:
        if exc is None:
            log.warning("round %d: node %d left out of the checkpoint (no answer)", round_, i)
        else:
            log.warning("round %d: node %d left out of the checkpoint: %s", round_, i, exc)

    nodes = gather_states(dict(enumerate(actors)), timeout, left_out=left_out)
    state = {
        "round": round_,
        "nodes": nodes,
        "history": history,
        "missing_since": since,
        "elapsed": elapsed,
    }
    save_checkpoint_file(path, state)
