"""The checks of ``ExperimentConfig.validate()`` beyond one field at a time: the device, the
data against the workers, and the conditions of the protocol and of each setting beyond the
base round (client population, gradient estimator, data poisoning by inversion, averaging
agreement, asynchrony, the crash regulariser). Every check raises a ``ValueError`` that names
the field, the condition and the values, before any data is loaded.

Each setting keeps its own conditions in its own module (``check_*`` functions);
``check_settings`` is the one list of them.
"""

from __future__ import annotations

from typing import Any


def validation_size(val_fraction: float, num_train: int) -> int:
    """Examples held out for validation from ``num_train``: ``round(val_fraction * num_train)``,
    at least 1 when ``val_fraction > 0``, 0 otherwise."""
    return max(1, int(round(val_fraction * num_train))) if val_fraction > 0 else 0


def check_population_fields(cfg: Any) -> None:
    """The client population's fields against each other (``byzance.round.clients``)."""
    from byzance.round.clients import check_population

    check_population(cfg)


def check_device(cfg: Any) -> None:
    """A device torch knows, and CUDA only where it is available."""
    import torch

    try:
        dev = torch.device(cfg.device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"ExperimentConfig.device: expected e.g. 'cpu' or 'cuda:0', got {cfg.device!r}"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"ExperimentConfig.device: {cfg.device!r} requested but CUDA is not available"
        )


def check_data(cfg: Any, check_model: bool = True) -> None:
    """What the dataset declares (``datasets.dataset_info``, no data loaded) against the
    config: the data dir exists and the files found look right (``datasets.check_files``,
    cheap and cached), the model fits the inputs (``models.check_fits``: one forward pass on
    a batch of one, cached), and after the validation split (``validation_size``) every one
    of the ``n_honest + f`` workers can get at least one training example (a client
    population: ``min_client_examples`` each). (``heterogeneity="dirichlet"`` may still
    leave a worker empty with few examples per worker: the partition says so at set-up.)"""
    from byzance import datasets, models

    info = datasets.dataset_info(cfg.dataset)
    if info.reads_files:
        try:
            datasets.check_data_dir(cfg.data_dir)
        except ValueError as exc:
            raise ValueError(f"ExperimentConfig.data_dir: {exc}") from exc
        try:
            datasets.check_files(info.name, cfg.data_dir)
        except ValueError as exc:
            raise ValueError(f"ExperimentConfig.dataset: {info.name}: {exc}") from exc
    if check_model and cfg.model in models.MODELS:
        try:
            models.check_fits(cfg.model, info.input_shape, info.num_classes)
        except ValueError as exc:
            raise ValueError(
                f"ExperimentConfig.model: {cfg.model!r} cannot run on dataset {info.name!r} "
                f"(inputs of shape {info.input_shape}): {exc}"
            ) from exc
    workers, n = cfg.n_honest + cfg.f, info.num_train
    n_val = validation_size(cfg.val_fraction, n)
    if cfg.n_clients is not None:  # a client population (byzance.round.clients)
        from byzance.round.clients import check_population_data

        check_population_data(cfg, n, n_val, info.name)
        return
    need = f"the {workers} workers (n_honest={cfg.n_honest} + f={cfg.f}) need one each"
    if n < workers:
        raise ValueError(
            f"ExperimentConfig.n_honest: dataset {info.name!r} has {n} training examples "
            f"and {need}; use at most {n} workers"
        )
    if n - n_val < workers:
        raise ValueError(
            f"ExperimentConfig.val_fraction: {cfg.val_fraction} holds out {n_val} of the "
            f"{n} training examples of {info.name!r} for validation, leaving {n - n_val}, "
            f"and {need}; use val_fraction <= {(n - workers) / n:.6g}"
        )


def check_decentralized(cfg: Any) -> None:
    """Protocol ``decentralized``: no server, so no server momentum; gradient attacks only (a
    node forges what it sends each peer; data poisoning has no server round to poison)."""
    if cfg.protocol != "decentralized":
        return
    if cfg.server_momentum:
        raise ValueError(
            "ExperimentConfig.server_momentum: must be 0 with protocol decentralized "
            f"(there is no server), got {cfg.server_momentum}"
        )
    if cfg.has_attack:
        from byzance.attacks import DataAttack

        if isinstance(cfg.build_attack(cfg.build_aggregator()), DataAttack):
            raise ValueError(
                "ExperimentConfig.attack: protocol decentralized supports gradient attacks, "
                f"not the data poisoning {cfg.attack!r}"
            )


def check_settings(cfg: Any, *, custom_model: bool = False) -> None:
    """Every protocol's and setting's own conditions (run after the rule and the attack are
    built, so their errors come first)."""
    from byzance.attacks.gradient_inversion import check_config as check_inversion
    from byzance.round.agreement import check_agreement, check_byzsgd
    from byzance.round.crash_training import check_config as check_crash
    from byzance.round.zero_order import check_config as check_estimator
    from byzance.sim.async_check import check_async

    check_estimator(cfg)  # FedZero's conditions (local_steps=1, ...)
    check_inversion(cfg)  # gradient inversion's (local_steps=1)
    if cfg.protocol == "byzsgd":
        check_byzsgd(cfg)  # ByzSGD's conditions on servers and workers
    check_decentralized(cfg)
    check_agreement(cfg)  # the averaging agreement's condition on n, f
    check_async(cfg)  # the async protocol's conditions (n >= 3f + 1, ...)
    check_crash(cfg, custom_model)  # the fault-tolerance regulariser's keys, layer
