"""Scenarios: what one simulation run is, parsed from TOML into frozen dataclasses.

Theory of operation: a scenario file is a flat top level (``name``, ``seed``, ``n``,
``rounds``, ...) plus one table per concern (``[data]``, ``[partition]``, ``[model]``,
``[topology]``, ``[algorithm]``, ``[training]``, ``[selection]``, ``[privacy]``, ``[secagg]``,
``[network]``, ``[faults]``, ``[compression]``). Each table maps onto one frozen, slotted
dataclass; the parser
walks the dataclass fields (``p2pfed.settings``, the parser of the daemon's config too), so
the accepted keys *are* the fields and an unknown key, a wrong type or a value out of range
ends in one ``ConfigError`` sentence naming the key (``scenario key [data] name ...``).

Sweeps override values by dotted path (``training.lr=0.1``); a path naming a table sets its
``name`` (``topology=ring`` means ``topology.name=ring``). A scenario has a canonical
dictionary form, and its SHA-256 is the identity of a sweep point (resume skips a point
whose stored hash matches).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from p2pfed.canonical import canonical_json
from p2pfed.collectives.robust import ROBUST_RULES
from p2pfed.errors import ConfigError
from p2pfed.privacy.accountants import ACCOUNTANT_KINDS
from p2pfed.settings import check, open_unit, parse, positive, read_toml
from sim.compression import CompressionSpec
from sim.paths import resolve_files
from topologies.mixing import MIXING_RULES

#: Bumped whenever the simulator's numerics change, so stale sweep points are recomputed.
ENGINE_VERSION = 2

Scalar = int | float | str | bool
_WHAT = "scenario"


@dataclasses.dataclass(frozen=True, slots=True)
class DataSpec:
    """Which data set, and how it is split into a training and a test part."""

    name: str = "breast_cancer"
    test_fraction: float = 0.2
    #: Synthetic data only: number of samples, features and classes.
    samples: int = 2000
    features: int = 20
    classes: int = 2
    #: Bring your own: ``module:function`` or ``file.py:function`` returning the train and
    #: test arrays (and optionally the partition); replaces ``name`` (see ``sim.sources``).
    loader: str = ""

    def validate(self) -> None:
        open_unit(self.test_fraction, "[data] test_fraction", _WHAT)
        _check_callable(self.loader, "data", "loader")
        _check(self.samples >= 10, "data", "samples", "must be at least 10")
        _check(self.features >= 1, "data", "features", "must be at least 1")
        _check(self.classes >= 2, "data", "classes", "must be at least 2")


@dataclasses.dataclass(frozen=True, slots=True)
class PartitionSpec:
    """How training samples are dealt out to the peers."""

    scheme: str = "iid"
    #: Dirichlet concentration (scheme ``dirichlet``; also the size skew of ``quantity``).
    alpha: float = 0.5
    #: Number of classes each peer holds (scheme ``classes``).
    classes_per_peer: int = 2
    #: 0: split the training set; > 0: every peer draws this many samples (with replacement
    #: across peers) following its scheme, so N may exceed the data set size.
    samples_per_peer: int = 0
    #: Redraw the partition (up to 100 times) until every site holds at least this many
    #: training examples; 0 accepts empty sites (they are then left out of every mean).
    min_examples: int = 0
    #: Bring your own: a JSON file listing each peer's training-sample indices (replaces
    #: ``scheme``; see ``sim.sources``).
    file: str = ""

    def validate(self) -> None:
        _check(
            self.scheme in PARTITION_SCHEMES,
            "partition",
            "scheme",
            f"must be one of {', '.join(PARTITION_SCHEMES)}",
        )
        _check(self.alpha > 0.0, "partition", "alpha", "must be > 0")
        _check(self.classes_per_peer >= 1, "partition", "classes_per_peer", "must be >= 1")
        _check(self.samples_per_peer >= 0, "partition", "samples_per_peer", "must be >= 0")
        _check(self.min_examples >= 0, "partition", "min_examples", "must be >= 0")


@dataclasses.dataclass(frozen=True, slots=True)
class ModelSpec:
    """The model every peer trains (functional torch modules)."""

    name: str = "logreg"
    #: Hidden width (``mlp`` only).
    hidden: int = 32
    #: ``same``: one initial model for all peers; ``independent``: one draw per peer.
    init: str = "same"
    #: Standard deviation of the initial weights (0 gives zeros for ``logreg``).
    init_scale: float = 0.0
    #: Bring your own: ``module:function`` or ``file.py:function`` called as
    #: ``function(features, classes)`` returning a ``torch.nn.Module``; its own initialisation
    #: (seeded from the scenario) gives the initial weights unless ``init_scale`` > 0.
    factory: str = ""

    def validate(self) -> None:
        _check(self.name in MODELS, "model", "name", f"must be one of {', '.join(MODELS)}")
        _check_callable(self.factory, "model", "factory")
        _check(self.hidden >= 1, "model", "hidden", "must be >= 1")
        _check(self.init in ("same", "independent"), "model", "init", "must be same or independent")
        _check(self.init_scale >= 0.0, "model", "init_scale", "must be >= 0")


@dataclasses.dataclass(frozen=True, slots=True)
class TopologySpec:
    """The communication graph (a ``topologies`` name) and how its weights are chosen."""

    name: str = "ring"
    #: A ``topologies`` weighting rule; ``auto`` is the topology's usual one
    #: (Metropolis–Hastings for undirected graphs, uniform for directed ones).
    mixing: str = "auto"
    #: Laziness β: W ← βI + (1-β)W (0 leaves W as it is).
    lazy: float = 0.0
    #: Extra parameters passed to ``topologies.build`` (e.g. ``p`` for erdos_renyi).
    params: tuple[tuple[str, Scalar], ...] = ()
    #: Bring your own graph: GraphML, GML, edge list or (node-link) JSON, with exactly n nodes;
    #: replaces ``name`` and ``params``.
    file: str = ""

    def validate(self) -> None:
        rules = ("auto", *MIXING_RULES)
        _check(
            not (self.file and self.params),
            "topology",
            "params",
            "cannot be combined with [topology] file (a graph file has no generator)",
        )
        _check(self.mixing in rules, "topology", "mixing", f"must be one of {', '.join(rules)}")
        _check(0.0 <= self.lazy < 1.0, "topology", "lazy", "must be in [0, 1)")


@dataclasses.dataclass(frozen=True, slots=True)
class AlgorithmSpec:
    """The decentralised optimisation algorithm."""

    name: str = "gossip"
    #: FedProx proximal weight μ (``fedprox`` only).
    mu: float = 0.01
    #: Byzantine-robust mixing (``gossip`` only): ``off`` or ``clipped-gossip``.
    robust: str = "off"
    #: Byzantine neighbours the clipping radius allows for (δ_i = their heaviest weights).
    byzantine_neighbours: int = 1
    #: Weights of the exact means (fedavg, fedprox, scaffold): ``examples`` (n_k, FedAvg)
    #: or ``uniform`` (1 per non-empty site).
    weighting: str = "examples"

    def validate(self) -> None:
        _check(
            self.name in ALGORITHMS,
            "algorithm",
            "name",
            f"must be one of {', '.join(ALGORITHMS)}",
        )
        _check(self.mu >= 0.0, "algorithm", "mu", "must be >= 0")
        _check(
            self.weighting in ("examples", "uniform"),
            "algorithm",
            "weighting",
            "must be examples or uniform",
        )
        rules = ", ".join(ROBUST_RULES)
        _check(self.robust in ROBUST_RULES, "algorithm", "robust", f"must be one of {rules}")
        _check(self.byzantine_neighbours >= 0, "algorithm", "byzantine_neighbours", "must be >= 0")
        _check(
            self.robust == "off" or self.name == "gossip",
            "algorithm",
            "robust",
            "needs [algorithm] name = gossip (clipping acts on the neighbours' models)",
        )


@dataclasses.dataclass(frozen=True, slots=True)
class SelectionSpec:
    """Which sites train in a round (``sim.algorithms.select``); the rest receive the mean."""

    #: ``all``; ``availability`` (site i is up with probability a_i ~ U[availability_min, 1]);
    #: ``quality`` (highest coarse local-loss bucket first).
    mode: str = "all"
    #: Share of the non-empty sites that train per round (at least one).
    fraction: float = 1.0
    availability_min: float = 0.5
    #: Number of coarse buckets a site reveals its quality score in (``quality``).
    buckets: int = 4

    def validate(self) -> None:
        _check(
            self.mode in SELECTION_MODES,
            "selection",
            "mode",
            f"must be one of {', '.join(SELECTION_MODES)}",
        )
        _check(0.0 < self.fraction <= 1.0, "selection", "fraction", "must be in (0, 1]")
        _check(
            0.0 < self.availability_min <= 1.0, "selection", "availability_min", "must be in (0, 1]"
        )
        _check(2 <= self.buckets <= 16, "selection", "buckets", "must be in [2, 16]")


@dataclasses.dataclass(frozen=True, slots=True)
class TrainingSpec:
    """Local training: SGD steps per round on minibatches of each peer's data."""

    lr: float = 0.1
    #: Minibatch steps per round (ignored when ``local_epochs`` > 0). 0 = mixing only.
    local_steps: int = 1
    #: If > 0, each peer makes ceil(epochs * m_i / batch_size) steps per round.
    local_epochs: int = 0
    batch_size: int = 16
    weight_decay: float = 0.0

    def validate(self) -> None:
        _check(self.lr >= 0.0 and math.isfinite(self.lr), "training", "lr", "must be >= 0")
        _check(self.local_steps >= 0, "training", "local_steps", "must be >= 0")
        _check(self.local_epochs >= 0, "training", "local_epochs", "must be >= 0")
        _check(self.batch_size >= 1, "training", "batch_size", "must be >= 1")
        _check(self.weight_decay >= 0.0, "training", "weight_decay", "must be >= 0")


@dataclasses.dataclass(frozen=True, slots=True)
class PrivacySpec:
    """Peer-level DP: each round's model update is clipped to L2 ≤ clip and noised."""

    enabled: bool = False
    clip: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"

    def validate(self) -> None:
        positive(self.clip, "[privacy] clip", _WHAT)
        positive(self.noise_multiplier, "[privacy] noise_multiplier", _WHAT)
        open_unit(self.delta, "[privacy] delta", _WHAT)
        kinds = ", ".join(ACCOUNTANT_KINDS)
        _check(
            self.accountant in ACCOUNTANT_KINDS, "privacy", "accountant", f"must be one of {kinds}"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class SecAggSpec:
    """Secure aggregation: a byte and time model, or (``real``) the actual masked-sum protocol."""

    enabled: bool = False
    #: Run p2pfed.secagg's protocol for every round's sum (exact averaging, n ≤ 64 only):
    #: fixed-point rounding and real message bytes instead of the model's.
    real: bool = False
    #: Fixed-point encoding of the real protocol: values clipped to [-clip_range, clip_range]
    #: on 2^level_bits levels.
    clip_range: float = 8.0
    level_bits: int = 22
    #: Width of the fixed-point ring Z_2^k each coordinate is sent in.
    bits: int = 32
    #: Bytes of one public key and of one Shamir share on the wire.
    key_bytes: int = 32
    share_bytes: int = 49
    #: Mask expansion speed (stream cipher), GB/s per core.
    prg_gbps: float = 0.96

    def validate(self) -> None:
        _check(self.bits in (16, 32, 64), "secagg", "bits", "must be 16, 32 or 64")
        _check(self.key_bytes >= 1, "secagg", "key_bytes", "must be >= 1")
        _check(self.share_bytes >= 1, "secagg", "share_bytes", "must be >= 1")
        positive(self.prg_gbps, "[secagg] prg_gbps", _WHAT)
        positive(self.clip_range, "[secagg] clip_range", _WHAT)
        _check(1 <= self.level_bits < self.bits, "secagg", "level_bits", "must be in [1, bits)")
        _check(not self.real or self.enabled, "secagg", "real", "needs [secagg] enabled = true")


@dataclasses.dataclass(frozen=True, slots=True)
class NetworkSpec:
    """Link model used to turn bytes into time."""

    bandwidth_mbps: float = 100.0
    latency_ms: float = 20.0
    #: Bytes per parameter on the wire without secure aggregation (4 = float32).
    bytes_per_param: int = 4

    def validate(self) -> None:
        positive(self.bandwidth_mbps, "[network] bandwidth_mbps", _WHAT)
        _check(self.latency_ms >= 0.0, "network", "latency_ms", "must be >= 0")
        _check(self.bytes_per_param in (2, 4, 8), "network", "bytes_per_param", "must be 2, 4 or 8")


@dataclasses.dataclass(frozen=True, slots=True)
class FaultSpec:
    """Injected faults, drawn per round from the scenario seed."""

    #: Probability that a peer sits a round out (no training, no messages).
    dropout: float = 0.0
    #: Probability that a peer straggles in a round, finishing only a fraction of its steps.
    straggler_prob: float = 0.0
    straggler_fraction: float = 0.5
    #: Probability that an undirected link fails for one round.
    link_failure: float = 0.0
    #: Number of Byzantine peers (fixed for the run) and what they send.
    byzantine: int = 0
    attack: str = "sign_flip"
    #: Factor applied to a Byzantine peer's update (``scale``), or the norm of the vector a
    #: ``large_norm`` attacker adds to its model.
    attack_scale: float = 10.0

    def validate(self) -> None:
        for key in ("dropout", "straggler_prob", "link_failure"):
            value = getattr(self, key)
            _check(0.0 <= value < 1.0, "faults", key, "must be in [0, 1)")
        _check(
            0.0 < self.straggler_fraction <= 1.0,
            "faults",
            "straggler_fraction",
            "must be in (0, 1]",
        )
        _check(self.byzantine >= 0, "faults", "byzantine", "must be >= 0")
        _check(self.attack in ATTACKS, "faults", "attack", f"must be one of {', '.join(ATTACKS)}")


@dataclasses.dataclass(frozen=True, slots=True)
class Scenario:
    """One simulation run, fully determined by its fields (the seed included)."""

    name: str = "scenario"
    seed: int = 0
    #: Number of virtual peers.
    n: int = 16
    rounds: int = 50
    #: Evaluate metrics every this many rounds (and always after the last).
    eval_every: int = 1
    dtype: str = "float32"
    data: DataSpec = DataSpec()
    partition: PartitionSpec = PartitionSpec()
    model: ModelSpec = ModelSpec()
    topology: TopologySpec = TopologySpec()
    algorithm: AlgorithmSpec = AlgorithmSpec()
    training: TrainingSpec = TrainingSpec()
    selection: SelectionSpec = SelectionSpec()
    privacy: PrivacySpec = PrivacySpec()
    secagg: SecAggSpec = SecAggSpec()
    network: NetworkSpec = NetworkSpec()
    faults: FaultSpec = FaultSpec()
    compression: CompressionSpec = dataclasses.field(default_factory=CompressionSpec)

    def validate(self) -> None:
        _check(self.n >= 1, "", "n", "must be >= 1")
        _check(self.rounds >= 1, "", "rounds", "must be >= 1")
        _check(self.eval_every >= 1, "", "eval_every", "must be >= 1")
        _check(self.seed >= 0, "", "seed", "must be >= 0")
        _check(self.dtype in ("float32", "float64"), "", "dtype", "must be float32 or float64")
        _check(
            self.faults.byzantine < self.n,
            "faults",
            "byzantine",
            f"must be smaller than n = {self.n}",
        )
        if self.secagg.real and self.algorithm.name not in ("fedavg", "fedprox"):
            raise ConfigError(
                "scenario key [secagg] real needs [algorithm] name = fedavg or fedprox "
                "(the real protocol sums a whole cohort)"
            )
        _check(
            not self.secagg.real or self.n <= REAL_SECAGG_MAX_N,
            "secagg",
            "real",
            f"runs the full protocol per round, so it takes at most {REAL_SECAGG_MAX_N} peers",
        )
        _check(
            self.algorithm.robust == "off" or not self.secagg.enabled,
            "algorithm",
            "robust",
            "cannot be combined with [secagg] enabled: clipping needs visible updates",
        )
        _check(
            self.faults.attack not in MODEL_ATTACKS or self.algorithm.name != "gradient_tracking",
            "faults",
            "attack",
            f"{self.faults.attack} poisons the model sent, which gradient_tracking does not mix",
        )
        if self.privacy.enabled and self.algorithm.name in ("gradient_tracking", "scaffold"):
            raise ConfigError(
                "[privacy] enabled cannot be combined with [algorithm] name = "
                f"{self.algorithm.name}: its tracker or control variate would be released "
                "un-noised"
            )
        _check(
            self.algorithm.name != "scaffold" or self.training.lr > 0.0,
            "training",
            "lr",
            "must be > 0 for scaffold (its control variates divide by it)",
        )
        if self.compression.scheme != "none":
            self._check_compression()
        _check(
            (self.selection.mode == "all" and self.selection.fraction == 1.0)
            or self.algorithm.name in EXACT_ALGORITHMS,
            "selection",
            "mode",
            "needs [algorithm] name = fedavg, fedprox or scaffold (a site left out of a gossip "
            "round would break the mixing)",
        )

    def _check_compression(self) -> None:
        name, exact = self.algorithm.name, self.algorithm.name in ("fedavg", "fedprox")
        _check(
            exact or name == "gossip", "compression", "scheme", "needs fedavg, fedprox or gossip"
        )
        _check(not self.secagg.real, "compression", "scheme", "needs [secagg] real = false")
        _check(
            exact or (not self.secagg.enabled and self.algorithm.robust == "off"),
            "compression",
            "scheme",
            "with gossip (CHOCO-SGD) needs [secagg] enabled = false and robust = off",
        )

    def to_dict(self) -> dict[str, Any]:
        """The canonical dictionary form (TOML-able; tuples of pairs become tables)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                table: dict[str, Any] = {}
                for g in dataclasses.fields(value):
                    item = getattr(value, g.name)
                    table[g.name] = dict(item) if isinstance(item, tuple) else item
                out[f.name] = table
            else:
                out[f.name] = value
        return out

    def digest(self) -> str:
        """SHA-256 of the canonical form plus the engine version: a sweep point's identity."""
        form = self.to_dict()
        if self.compression == CompressionSpec():  # off: digests from before the table hold
            del form["compression"]
        payload = {"engine": ENGINE_VERSION, "scenario": form}
        return hashlib.sha256(canonical_json(payload)).hexdigest()


#: Largest cohort the real secure-aggregation protocol is run for (per round, in process).
REAL_SECAGG_MAX_N = 64
PARTITION_SCHEMES = ("iid", "dirichlet", "classes", "quantity")
MODELS = ("logreg", "mlp")
ALGORITHMS = ("local", "gossip", "fedavg", "fedprox", "scaffold", "gradient_tracking")
#: Algorithms whose mixing is one exact (weighted) mean over the sites of the round.
EXACT_ALGORITHMS = ("fedavg", "fedprox", "scaffold")
SELECTION_MODES = ("all", "availability", "quality")
#: Attacks on the update Δ_i (sign_flip, scale) and on the model sent (flip_model, large_norm).
MODEL_ATTACKS = ("flip_model", "large_norm")
ATTACKS = ("sign_flip", "scale", *MODEL_ATTACKS)


def _check(ok: bool, section: str, key: str, why: str) -> None:
    check(ok, f"[{section}] {key}" if section else key, why, _WHAT)


def _check_callable(text: str, section: str, key: str) -> None:
    module, sep, function = text.rpartition(":")
    ok = not text or (bool(sep) and bool(module) and function.isidentifier())
    _check(ok, section, key, f"must look like module:function or file.py:function, not {text!r}")


def scenario_from_dict(raw: Mapping[str, object]) -> Scenario:
    """Build and validate a scenario from a parsed TOML document."""
    return parse(Scenario, raw, _WHAT)


def read_scenario_document(path: Path) -> dict[str, Any]:
    """A scenario file's TOML document with its file keys resolved against its folder."""
    raw = read_toml(path, _WHAT)
    resolve_files(raw, Path(path).parent)
    return raw


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario TOML file (paths in it are relative to its folder)."""
    return scenario_from_dict(read_scenario_document(path))
