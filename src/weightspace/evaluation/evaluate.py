"""The evaluation of a weight-space autoencoder on held-out members (DESIGN.md, step 6).

:func:`evaluate_autoencoder` answers three questions, each next to the field's baselines:

1. **Probes** (:mod:`~weightspace.evaluation.probes`, :mod:`~weightspace.evaluation.compare`).
   Does the latent hold what we know about a network: its test accuracy, epoch,
   generalization gap and hyperparameters? Representations: the latent, the encoder's own
   coordinates without the invariant features the latent may carry ("learned": what learning
   adds), per-layer weight statistics (Unterthiner et al., 2020), the invariant features the
   model reads, the raw normalized weights and PCA of the same width as the latent
   (:mod:`weightspace.features`), and a ``chance`` row.
2. **Reconstruction** (:mod:`~weightspace.evaluation.reconstruction`). Decoded networks run
   on the task; the PCA of the same width is the linear autoencoder to beat.
3. **Generation** (:mod:`~weightspace.evaluation.sampling`). A density fitted to the latents
   of the best training checkpoints is sampled, decoded and the networks evaluated untrained;
   optionally audited for memorization against noise and averages of the training checkpoints
   (:mod:`~weightspace.evaluation.audit`).

It returns an :class:`~weightspace.evaluation.results.EvalResults`. Everything it calls is a
pure function of arrays or stacked parameters, testable without an autoencoder; of the model
it needs only :class:`LatentModel` (and ``invariant_features`` / ``encode_learned`` when
the model has them).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from weightspace.data.datamodule import WeightDataModule
from weightspace.evaluation.audit import AuditInputs, AuditOptions, run_audit
from weightspace.evaluation.compare import compare_probes
from weightspace.evaluation.inr import (
    INR_TARGETS,
    field_psnr,
    inr_generation,
    inr_probe_targets,
    inr_reconstruction_table,
    is_inr,
    item_signals,
    render,
    signal_grid,
)
from weightspace.evaluation.probes import Split3, probe_table
from weightspace.evaluation.reconstruction import evaluate_networks, reconstruction_table
from weightspace.evaluation.results import EvalResults
from weightspace.evaluation.sampling import fit_latent_density, generation_metrics, top_fraction
from weightspace.evaluation.scores import quartiles
from weightspace.evaluation.splits import (
    DEFAULT_TARGETS,
    SplitData,
    load_split,
    probe_targets,
    to_params,
)
from weightspace.features.pca import fit_pca
from weightspace.features.spec import FeatureSpec
from weightspace.features.statistics import layer_statistics
from weightspace.nets.spec import MLPSpec, Params
from weightspace.zoo.tasks import Task

# Who is compared with whom (:func:`compare_probes`), in this order: the latent against every
# other representation, the encoder's own coordinates against the field's baselines and the
# invariant features (is learning worth anything beyond the hand-made features?).
COMPARED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("latent", ("stats", "invariants", "raw", "pca", "learned", "probed", "signal")),
    ("learned", ("stats", "invariants", "raw", "probed", "signal")),
    ("combined", ("stats", "invariants")),
)


class LatentModel(Protocol):
    """What :func:`evaluate_autoencoder` needs of a model: normalized flat vectors in,
    latents out, and back. A token-based model wraps its own conversion."""

    def encode(self, weights: Tensor) -> Tensor:  # (B, D) -> (B, latent)
        ...

    def decode(self, latent: Tensor) -> Tensor:  # (B, latent) -> (B, D)
        ...


def _model_device(model: Any) -> torch.device:
    params = getattr(model, "parameters", None)
    if callable(params):
        first = next(iter(params()), None)
        if first is not None:
            return first.device
    return torch.device("cpu")


@torch.no_grad()
def apply_in_batches(
    fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int, device, what: str
) -> Tensor:
    """``fn`` over ``x`` in batches on ``device`` under no_grad: ``(N, n)`` float32 on the CPU
    (``what`` names ``fn`` when it returns anything but a 2-d tensor)."""
    outs = []
    for s in range(0, len(x), batch_size):
        y = fn(x[s : s + batch_size].to(device))
        if not isinstance(y, Tensor) or y.dim() != 2:
            raise TypeError(f"model.{what} must return a (B, n) tensor, got {type(y).__name__}")
        outs.append(y.detach().float().cpu())
    return torch.cat(outs)


def _invariants(model: Any, params: Params, spec: MLPSpec) -> np.ndarray:
    """The invariant features of stacked networks ``(N, F)`` float64, the reference for a
    latent that reads them: the model's own (``model.invariant_features(params)``: the same
    features it reads, e.g. with the layer products' spectra and the function features on its
    probe inputs), else the statistics with every weight matrix's log singular values."""
    features = getattr(model, "invariant_features", None)
    if callable(features):
        return np.asarray(features(params))
    return FeatureSpec(spectrum=True).compute(params, spec)


def combined_representation(reps: dict[str, Split3]) -> dict[str, Split3]:
    """``{"combined": learned beside invariants}`` when the latent is the learned coordinates
    alone (as wide as them), else ``{}``: a latent that concatenates the invariant features is
    this by construction, so every model answers the same question — do the learned numbers
    add to the hand-made features?"""
    learned, latent = reps.get("learned"), reps["latent"]
    if learned is None or learned[0].shape[1] != latent[0].shape[1]:
        return {}
    pairs = zip(learned, reps["invariants"])
    return {"combined": tuple(np.concatenate([a, b], axis=1) for a, b in pairs)}


def evaluate_autoencoder(
    model: LatentModel,
    datamodule: WeightDataModule,
    task: Task | None = None,
    latent_dim: int | None = None,
    *,
    targets: Sequence[str] = DEFAULT_TARGETS,
    boosting: bool | Collection[str] = (
        "latent",
        "learned",
        "stats",
        "invariants",
        "combined",
        "pca",
        "probed",
        "signal",
    ),
    density: str = "gaussian",
    top: float = 0.3,
    n_samples: int = 256,
    batch_size: int = 512,
    max_items: int | None = None,
    seed: int = 0,
    audit: AuditOptions | None = None,
) -> EvalResults:
    """Evaluate an autoencoder over weights on the datamodule's held-out (test) members.

    ``model.encode`` maps normalized flat vectors ``(B, D)`` (``datamodule.normalizer``, the
    dataset's transform applied, no augmentation) to latents ``(B, latent)``;
    ``model.decode`` maps latents back to normalized flat vectors. A model working on
    neuron tokens converts inside these two methods
    (:func:`weightspace.nets.layout.unflatten_params` / ``params_to_tokens``). Both are called
    under ``torch.no_grad`` in batches of ``batch_size`` on the model's device; a
    ``nn.Module`` is switched to eval mode meanwhile.

    - Probes (:func:`probe_table`): fitted on train, chosen on val, scored on test, for the
      latent, the encoder's own coordinates ("learned": ``model.encode_learned``, the latent
      without the invariant features it carries, concatenated or added; the same numbers as
      the latent when it carries none; no row for a model without that method); when the
      latent is the learned coordinates alone, also those beside the invariant features
      ("combined": what the demo's latent is by construction, so the question "does learning
      add to the hand-made features?" is asked of every model alike), layer
      statistics ("stats"), the invariant features alone ("invariants": the
      reference for a latent that reads them, ``model.invariant_features(params)`` when the
      model has it, else the statistics with every weight matrix's log singular values),
      raw normalized weights ("raw") and a PCA of ``latent_dim`` components fitted on train
      ("pca"); for an encoder with probe features (``model.encoder.probe_x``), the networks'
      outputs on those inputs ("probed": what the encoder reads of the function directly, the
      control for how much its latent owes the weights); on an INR zoo, the signal each INR
      fits ("signal": the ceiling of any reading of an INR); ``boosting`` names the
      representations that also get a boosting probe (raw weights are too wide by default).
    - Reconstruction (:func:`reconstruction_metrics`) of the test networks by the model and
      by the PCA, plus ``r2_normalized`` (:func:`flat_r2`) in the normalized space.
    - Generation: a ``density`` fitted to the latents of the ``top`` fraction of training
      checkpoints by test accuracy (those of their most common activation), ``n_samples``
      decoded and evaluated untrained (:func:`generation_metrics`, against all training
      checkpoints); ``decoded_fit_acc_*`` is the accuracy of the fitted points themselves
      decoded, which separates decoder error from density error.
    - ``audit`` (None: not run): the memorization audit of those samples
      (:func:`~weightspace.evaluation.audit.run_audit`, its own RNG stream: every other
      number is the same with or without it) in ``audit`` and ``audit_points``.

    ``task``: default, the zoo's own (``Zoo.task()``). ``latent_dim``: default, the width of
    the latents (given, it must match). ``max_items``: a seeded subset of each split's
    checkpoints, for large zoos. Returns an :class:`EvalResults`: ``probes``, ``table``
    (markdown), ``comparisons`` (the latent's probes against every other representation's,
    the learned coordinates' against stats, invariants and raw, the combined ones' against
    stats and invariants (:data:`COMPARED`), with paired bootstrap intervals over test
    members, :func:`compare_probes`), ``reconstruction``
    (rows autoencoder, pca, and per checkpoint epoch, see :func:`reconstruction_table`),
    ``generation`` and ``info`` (dicts).
    """
    datamodule.setup("test")
    if task is None:
        task = datamodule.task
    inr = is_inr(task)  # an INR zoo: signals and PSNR instead of accuracy (evaluation/inr.py)
    if inr and tuple(targets) == DEFAULT_TARGETS:
        targets = INR_TARGETS
    splits = {s: load_split(datamodule, s, max_items, seed) for s in ("train", "val", "test")}
    spec = datamodule.spec
    device = _model_device(model)
    was_training = getattr(model, "training", None)
    if was_training is not None and hasattr(model, "eval"):
        model.eval()
    try:
        z = {
            s: apply_in_batches(model.encode, d.weights, batch_size, device, "encode")
            for s, d in splits.items()
        }
        width = z["train"].shape[1]
        if latent_dim is not None and latent_dim != width:
            raise ValueError(f"latent_dim={latent_dim}, but model.encode gives {width} dims")
        learned_fn = getattr(model, "encode_learned", None)
        learned = None
        if callable(learned_fn):
            learned = {
                s: apply_in_batches(learned_fn, d.weights, batch_size, device, "encode_learned")
                for s, d in splits.items()
            }
        decoded = apply_in_batches(model.decode, z["test"], batch_size, device, "decode")
        field, rendered = getattr(model, "field", None), None
        if inr and field is not None:  # the field decoder renders the test signals
            coords = task.coords.to(device)
            rendered = apply_in_batches(
                lambda zz: field(zz, coords).flatten(1), z["test"], batch_size, device, "field"
            ).view(len(decoded), len(coords), -1)
        sampled, state = None, None
        if inr:
            generation, sampled = inr_generation(
                lambda zz: apply_in_batches(model.decode, zz, batch_size, device, "decode"),
                datamodule,
                splits["train"],
                z["train"],
                task,
                density,
                top,
                n_samples,
                seed,
            )
        else:
            generation, state = _generation(
                model,
                datamodule,
                splits["train"],
                z["train"],
                task,
                density,
                top,
                n_samples,
                batch_size,
                device,
                seed,
            )
        audit_summary, audit_points = {}, None
        if audit is not None and state is not None:
            dens, flat, fit_idx, gen_spec = state
            audit_summary, audit_points = run_audit(
                AuditInputs(
                    splits["train"].weights,
                    splits["train"].params,
                    splits["train"].specs,
                    splits["test"].weights,
                    splits["test"].params,
                    splits["test"].specs,
                    fit_idx,
                    dens,
                    flat,
                    gen_spec,
                    lambda zz: apply_in_batches(model.decode, zz, batch_size, device, "decode"),
                    lambda f: to_params(f, datamodule, gen_spec),
                ),
                task,
                audit,
                seed,
            )
    finally:
        if was_training and hasattr(model, "train"):
            model.train()

    # ---- probes
    order = ("train", "val", "test")
    pca = fit_pca(splits["train"].weights.double().numpy(), width, seed)
    reps: dict[str, Split3] = {"latent": tuple(z[s].double().numpy() for s in order)}
    if learned is not None:  # what learning adds: the latent without the invariant features
        reps["learned"] = tuple(learned[s].double().numpy() for s in order)
    reps |= {
        "stats": tuple(layer_statistics(splits[s].params, spec) for s in order),
        # The reference for a latent that carries the invariant features carries the same ones.
        "invariants": tuple(_invariants(model, splits[s].params, spec) for s in order),
        "raw": tuple(splits[s].weights.double().numpy() for s in order),
        "pca": tuple(pca.transform(splits[s].weights.double().numpy()) for s in order),
    }
    reps |= combined_representation(reps)
    probe_x = getattr(getattr(model, "encoder", None), "probe_x", None)
    if probe_x is not None:
        x = probe_x.detach().cpu()  # the outputs there, in float64
        reps["probed"] = tuple(
            render(splits[s].params, splits[s].specs, x, torch.float64).flatten(1).numpy()
            for s in order
        )
    if inr:  # what the INRs were fitted to
        signals = task.signals.flatten(1).double().numpy()
        reps["signal"] = tuple(signals[item_signals(datamodule, splits[s].items)] for s in order)
    tgt, categorical = (inr_probe_targets if inr else probe_targets)(
        [splits[s].items for s in order], targets
    )
    pred: dict = {}
    probes = probe_table(reps, tgt, categorical, boosting=boosting, seed=seed, predictions=pred)
    y_test = {t: np.asarray(y[2]) for t, y in tgt.items()}
    # One call (one bootstrap stream from ``seed``) per subject: adding a subject leaves the
    # others' numbers as they were.
    comparisons = pd.concat(
        [
            compare_probes(
                pred,
                y_test,
                splits["test"].groups,
                categorical,
                subject,
                seed=seed,
                baselines=baselines,
            )
            for subject, baselines in COMPARED
            if subject in reps
        ],
        ignore_index=True,
    )

    # ---- reconstruction of the test networks
    test = splits["test"]
    pca_flat = torch.from_numpy(pca.inverse_transform(reps["pca"][2])).float()
    table = inr_reconstruction_table if inr else reconstruction_table
    reconstruction = table(test, {"autoencoder": decoded, "pca": pca_flat}, datamodule, spec, task)
    signals = None
    if inr:  # a few held-out signals as fitted, decoded and sampled (signals.png)
        signals = signal_grid(test, datamodule, task, test.params, decoded, spec, sampled, rendered)

    info = {
        "task": task.name,
        "latent_dim": int(width),
        "pca_components": int(pca.n_components_),
        "pca_explained_variance": float(pca.explained_variance_ratio_.sum()),
        **{f"n_items/{s}": len(splits[s]) for s in order},
        **{f"n_members/{s}": len(np.unique(splits[s].groups)) for s in order},
        "categorical": sorted(categorical),
        "seed": seed,
    }
    if rendered is not None:
        info |= field_psnr(test, datamodule, task, rendered)
    return EvalResults(
        probes=probes,
        reconstruction=reconstruction,
        comparisons=comparisons,
        generation=generation,
        info=info,
        audit=audit_summary,
        audit_points=audit_points,
        signals=signals,
    )


def _generation(
    model: LatentModel,
    datamodule: WeightDataModule,
    train: SplitData,
    z_train: Tensor,
    task: Task,
    kind: str,
    top: float,
    n_samples: int,
    batch_size: int,
    device: torch.device,
    seed: int,
) -> tuple[dict[str, Any], tuple | None]:
    """Fit, sample, decode and evaluate (see :func:`evaluate_autoencoder`); also the density,
    the decoded samples, the fitted rows and the samples' spec, for the audit."""
    acc = train.items["test_acc"].to_numpy(np.float64)
    best = top_fraction(acc, top) if np.isfinite(acc).any() else np.arange(len(train))
    acts = np.array([train.specs[i].activation for i in best])
    values, counts = np.unique(acts, return_counts=True)
    activation = str(values[np.argmax(counts)])
    fit_idx = best[acts == activation]
    info: dict[str, Any] = {"density": kind, "top_fraction": top, "activation": activation}
    info["n_fit"] = len(fit_idx)
    if len(fit_idx) < 2:
        return {**info, "note": "fewer than 2 checkpoints to fit a density to"}, None
    dens = fit_latent_density(z_train[fit_idx].double().numpy(), kind)
    spec = MLPSpec(datamodule.spec.widths, activation, datamodule.spec.bias)
    samples = torch.from_numpy(dens.sample(n_samples, seed)).float()
    flat = apply_in_batches(model.decode, samples, batch_size, device, "decode")
    _, sample_acc = evaluate_networks(to_params(flat, datamodule, spec), spec, task)
    refit = apply_in_batches(model.decode, z_train[fit_idx], batch_size, device, "decode")
    _, fit_acc = evaluate_networks(to_params(refit, datamodule, spec), spec, task)
    metrics = generation_metrics(flat, train.weights, sample_acc, acc, train.groups, seed=seed)
    return {
        **info,
        **metrics,
        **quartiles(acc[fit_idx], "fit_acc"),
        **quartiles(fit_acc, "decoded_fit_acc"),
    }, (dens, flat, fit_idx, spec)
