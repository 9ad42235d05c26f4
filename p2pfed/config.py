"""The peer daemon's configuration (``config.toml``), parsed and checked in one place.

Theory of operation: every table of the file maps onto one frozen dataclass below, parsed by
``p2pfed.settings`` — so the accepted keys are exactly these fields, and an unknown key, a
wrong type or a bad value ends in one ``ConfigError`` naming the key. Relative paths are
resolved against the folder holding the config file, so an institution folder can be moved
as a whole. ``render_default`` writes the commented file ``p2pfed init`` creates.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from p2pfed.collectives.robust import ROBUST_RULES
from p2pfed.privacy.accountants import ACCOUNTANT_KINDS
from p2pfed.settings import check, open_unit, parse, positive, read_toml
from p2pfed.training.data import BUILTIN_DATASETS
from p2pfed.training.models import BUILTIN_MODELS
from p2pfed.training.trainer import TrainingConfig

MODES = ("ring", "gossip")
PRIVACY_MODES = ("distributed", "local", "dp-sgd", "off")
WEIGHTINGS = ("uniform", "examples")


@dataclass(frozen=True)
class NodeSection:
    """Who this node is and where it keeps its state."""

    name: str
    identity: str = "identity.key"
    state_dir: str = "state"
    log_json: bool = False
    log_level: str = "info"

    def validate(self) -> None:
        check(bool(self.name.strip()), "[node] name", "must not be empty")
        levels = ("debug", "info", "warning", "error")
        check(self.log_level in levels, "[node] log_level", f"must be one of {levels}")


@dataclass(frozen=True)
class NetworkSection:
    """Where to listen, the consortium roster, and whom to dial first."""

    listen: str = "/ip4/0.0.0.0/tcp/4001"
    roster: str = "roster.json"
    bootstrap: tuple[str, ...] = ()

    def validate(self) -> None:
        check(
            self.listen.startswith("/ip"),
            "[network] listen",
            "must be a multiaddr like /ip4/0.0.0.0/tcp/4001",
        )


@dataclass(frozen=True)
class RoundsSection:
    """How rounds are run: aggregation mode, topology for gossip, count and pacing."""

    mode: str = "ring"
    topology: str = "exponential"
    rounds: int = 20
    min_peers: int = 2
    round_timeout_s: float = 120.0
    #: Byzantine-robust mixing of clear gossip: "off" or "clipped-gossip" (collectives.robust).
    robust: str = "off"
    #: Byzantine in-neighbours the clipping radius allows for (δ_i = their heaviest weights).
    byzantine_neighbours: int = 1
    #: The exact mean's weights: "uniform" (1 per member) or "examples" (FedAvg: each
    #: member weighs min(n_k, max_examples) training rows; ring mode, privacy off only).
    weighting: str = "uniform"
    max_examples: int = 10_000
    #: Stage deadlines follow the measured round cost between these (0: the defaults below).
    stage_timeout_min_s: float = 0.0
    stage_timeout_max_s: float = 0.0
    #: The link rate assumed until the first round has been measured.
    link_mbps: float = 100.0
    compression: str = "none"  # "q8"/"q4": p2pfed.secagg.compression (checked by prepare)

    @property
    def stage_floor_s(self) -> float:
        """The shortest stage deadline: set, or min(10 s, round_timeout_s / 4)."""
        return self.stage_timeout_min_s or min(10.0, self.round_timeout_s / 4)

    @property
    def stage_ceiling_s(self) -> float:
        """The longest stage deadline: set (no upper limit of its own), or round_timeout_s."""
        return self.stage_timeout_max_s or max(self.round_timeout_s, self.stage_floor_s)

    def validate(self) -> None:
        check(
            self.weighting in WEIGHTINGS,
            "[rounds] weighting",
            f"must be one of {WEIGHTINGS}, not {self.weighting!r}",
        )
        check(self.max_examples >= 1, "[rounds] max_examples", "must be ≥ 1")
        check(self.mode in MODES, "[rounds] mode", f"must be one of {MODES}, not {self.mode!r}")
        rules = ROBUST_RULES
        check(
            self.robust in rules, "[rounds] robust", f"must be one of {rules}, not {self.robust!r}"
        )
        check(self.byzantine_neighbours >= 0, "[rounds] byzantine_neighbours", "must be ≥ 0")
        check(self.rounds >= 1, "[rounds] rounds", "must be ≥ 1")
        check(self.min_peers >= 2, "[rounds] min_peers", "must be ≥ 2")
        positive(self.round_timeout_s, "[rounds] round_timeout_s")
        positive(self.link_mbps, "[rounds] link_mbps")
        for key in ("stage_timeout_min_s", "stage_timeout_max_s"):
            check(getattr(self, key) >= 0, f"[rounds] {key}", "must be ≥ 0 (0: the default)")
        check(
            self.stage_floor_s <= self.stage_ceiling_s,
            "[rounds] stage_timeout_max_s",
            f"must be at least the shortest stage deadline, {self.stage_floor_s:g} s",
        )


def _reference(spec: str, has_args: bool, key: str, args_key: str) -> None:
    """``spec`` is empty or ``module:function``; ``args`` only with it."""  # factory, loader
    module, _, function = spec.partition(":")
    check(bool(module and function) or not spec, key, f"{spec!r} must look like module:function")
    check(bool(spec) or not has_args, args_key, f"are given without a {key.split()[1]}")


@dataclass(frozen=True)
class ModelSection:
    """The model architecture every member builds (same seed: same starting weights)."""

    kind: str = "logistic"
    hidden: tuple[int, ...] = (32,)
    seed: int = 0
    factory: str = ""  # module:function returning your nn.Module; args: its keywords
    args: tuple[tuple[str, bool | int | float | str], ...] = ()
    torchscript: str = ""  # a torch.jit.save file (its weights are the starting point)

    def validate(self) -> None:
        ok = self.kind in BUILTIN_MODELS or ":" in self.kind
        check(ok, "[model] kind", f"must be one of {BUILTIN_MODELS} or module:factory")
        check(all(h >= 1 for h in self.hidden), "[model] hidden", "must list positive widths")
        _reference(self.factory, bool(self.args), "[model] factory", "[model] args")
        # kind has a default, so only a kind other than it can be told apart from "unset".
        alone = not self.torchscript or (not self.factory and self.kind == "logistic")
        check(alone, "[model] torchscript", "replaces kind and factory: set exactly one of them")

    def reference(self) -> str:
        """The study protocol's model kind: the kind, or the factory call (not TorchScript's)."""
        if not self.factory:
            return self.kind
        return f"{self.factory}({', '.join(f'{k}={v!r}' for k, v in self.args)})"


@dataclass(frozen=True)
class DataSection:
    """The local data: a CSV file, a built-in data set or a loader, and the held-out share."""

    path: str = ""
    builtin: str = ""
    label_column: str = "label"
    feature_columns: tuple[str, ...] = ()
    test_fraction: float = 0.2
    loader: str = ""  # module:function returning a torch Dataset of (x, y); args: its keywords
    args: tuple[tuple[str, bool | int | float | str], ...] = ()

    def validate(self) -> None:
        one = [bool(self.path), bool(self.builtin), bool(self.loader)].count(True) == 1
        check(one, "[data] path", "or [data] builtin or [data] loader must be set (exactly one)")
        _reference(self.loader, bool(self.args), "[data] loader", "[data] args")
        known = not self.builtin or self.builtin in BUILTIN_DATASETS
        check(known, "[data] builtin", f"must be one of {BUILTIN_DATASETS}")
        open_unit(self.test_fraction, "[data] test_fraction")


@dataclass(frozen=True)
class SchemaSection:
    """The consortium's declared data schema (empty features: taken from the data)."""

    features: tuple[str, ...] = ()
    labels: tuple[int, ...] = (0, 1)
    types: tuple[str, ...] = ()
    label_distribution: tuple[float, ...] = ()
    center: tuple[float, ...] = ()
    """Agreed per-feature centre for standardisation; empty: each node uses its own mean."""
    scale: tuple[float, ...] = ()
    """Agreed per-feature scale; empty: each node uses its own standard deviation."""

    def validate(self) -> None:
        paired = len(self.center) == len(self.scale)
        check(paired, "[schema] scale", "must have one entry per center entry")
        check(all(s > 0 for s in self.scale), "[schema] scale", "entries must be positive")
        fits = not (self.features and self.center) or len(self.center) == len(self.features)
        check(fits, "[schema] center", "needs one entry per feature")


@dataclass(frozen=True)
class StudySection:
    """The consortium's signed study protocol (``p2pfed protocol``); empty: none."""

    protocol: str = ""
    """Path of the protocol file. Its features, label and normalisation are used; its model,
    training, rounds and privacy settings must equal this file's (see docs/deployment.md)."""


@dataclass(frozen=True)
class ValidationSection:
    """Limits past which the node refuses to join (see p2pfed.training.validation)."""

    min_samples: int = 30
    max_missing_fraction: float = 0.0
    max_label_skew: float = 0.45
    min_classes: int = 1


@dataclass(frozen=True)
class PrivacySection:
    """Differential privacy of every released update, and the institution's budget."""

    mode: str = "distributed"
    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    target_epsilon: float = 0.0
    """If > 0: choose σ so that all [rounds] rounds spend at most this ε (overrides σ)."""
    sample_rate: float = 1.0
    """dp-sgd: Poisson rate of each local step (expected batch = rate × local rows)."""
    steps_per_round: int = 1
    """For reports' "rounds left": accountant steps one release composes (dp-sgd: local steps)."""
    delta: float = 1e-5
    epsilon_budget: float = 10.0
    accountant: str = "pld"
    ledger: str = "state/privacy.ledger"

    def validate(self) -> None:
        check(self.mode in PRIVACY_MODES, "[privacy] mode", f"must be one of {PRIVACY_MODES}")
        positive(self.clip_norm, "[privacy] clip_norm")
        positive(self.noise_multiplier, "[privacy] noise_multiplier")
        check(0 < self.sample_rate <= 1, "[privacy] sample_rate", "must be in (0, 1]")
        check(self.steps_per_round >= 1, "[privacy] steps_per_round", "must be ≥ 1")
        open_unit(self.delta, "[privacy] delta")
        positive(self.epsilon_budget, "[privacy] epsilon_budget")
        check(self.target_epsilon >= 0, "[privacy] target_epsilon", "must be ≥ 0 (0: use σ)")
        check(
            self.target_epsilon <= self.epsilon_budget,
            "[privacy] target_epsilon",
            "must not exceed epsilon_budget",
        )
        check(
            self.accountant in ACCOUNTANT_KINDS,
            "[privacy] accountant",
            f"must be one of {ACCOUNTANT_KINDS}",
        )


@dataclass(frozen=True)
class SecAggSection:
    """Masked-sum secure aggregation of the updates."""

    enabled: bool = True
    threshold: int = 0
    """Shamir shares needed to recover a dropped peer's masks, among its share holders (all
    members up to 16, its SecAgg+ neighbours beyond); 0 means a majority of them. A round
    completes only when more than (members + collusion)/2 contribute (the consistency
    quorum), at least ``min_contributors`` and ``[rounds] min_peers``."""
    collusion: int = 1
    """The threat model's collusion bound c: members assumed to pool what they see (1: each
    member on its own). Must stay below the threshold; distributed noise holds against them."""
    min_contributors: int = 0
    """No sum of fewer inputs is ever unmasked; 0 means collusion + 2, the least allowed."""
    bits: int = 32
    clip_range: float = 8.0
    """Each quantised coordinate is clipped to ±clip_range before masking (float path only)."""

    def validate(self) -> None:
        check(self.threshold >= 0, "[secagg] threshold", "must be ≥ 0 (0: a majority)")
        check(self.collusion >= 1, "[secagg] collusion", "must be ≥ 1 (each member itself)")
        check(
            self.min_contributors == 0 or self.min_contributors >= self.collusion + 2,
            "[secagg] min_contributors",
            "must be 0 (collusion + 2) or at least collusion + 2, so that c colluding members "
            "never isolate another member's input",
        )
        check(self.bits in (32, 64), "[secagg] bits", "must be 32 or 64")
        positive(self.clip_range, "[secagg] clip_range")


@dataclass(frozen=True)
class GovernanceSection:
    """Audit log salt and drift thresholds."""

    audit_salt: str = ""
    """No longer read: refused if set, since configs are shared and the salt is secret (each
    node keeps its own ``audit.salt`` beside its identity key)."""
    accuracy_drop: float = 0.05
    """Alert when accuracy falls this much below the best of recent rounds."""
    psi_major: float = 0.2
    """Population stability index above which an input feature counts as shifted."""

    def validate(self) -> None:
        if self.audit_salt:
            try:
                raw = bytes.fromhex(self.audit_salt)
            except ValueError:
                raw = b""
            check(len(raw) >= 16, "[governance] audit_salt", "must be at least 32 hex digits")
        open_unit(self.accuracy_drop, "[governance] accuracy_drop")
        positive(self.psi_major, "[governance] psi_major")


@dataclass(frozen=True)
class MetricsSection:
    """Prometheus metrics endpoint; off unless a port is set."""

    port: int = 0
    host: str = "127.0.0.1"
    dashboard_token_file: str = ""
    """Required when ``host`` is not loopback: clients send the token it holds."""

    def validate(self) -> None:
        check(0 <= self.port < 65536, "[metrics] port", "must be 0 (off) or a TCP port")


@dataclass(frozen=True)
class Config:
    """A whole ``config.toml``."""

    node: NodeSection
    network: NetworkSection = field(default_factory=NetworkSection)
    rounds: RoundsSection = field(default_factory=RoundsSection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=lambda: DataSection(builtin="breast_cancer"))
    schema: SchemaSection = field(default_factory=SchemaSection)
    study: StudySection = field(default_factory=StudySection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    privacy: PrivacySection = field(default_factory=PrivacySection)
    secagg: SecAggSection = field(default_factory=SecAggSection)
    governance: GovernanceSection = field(default_factory=GovernanceSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    base_dir: str = ""
    """Folder relative paths are resolved against (set by ``load_config``, not the file)."""

    def validate(self) -> None:
        if self.rounds.robust != "off":
            check(
                self.rounds.mode == "gossip" and not self.secagg.enabled,
                "[rounds] robust",
                f"= {self.rounds.robust} needs [rounds] mode = gossip with [secagg] enabled = "
                "false: clipping needs visible updates",
            )
        if self.rounds.weighting == "examples":
            check(
                self.rounds.mode == "ring" and self.privacy.mode == "off",
                "[rounds] weighting",
                '= "examples" needs [rounds] mode = ring and [privacy] mode = off (the exact '
                "total of examples in each sum would be released without noise, and a "
                "weight would scale the noise calibrated for one update)",
            )
        # Distributed noise shares are safe only inside an exact secure sum.
        if self.privacy.mode == "distributed":
            ok = self.rounds.mode == "ring" and self.secagg.enabled
            check(
                ok,
                "[privacy] mode",
                "= distributed needs [rounds] mode = ring with [secagg] enabled (otherwise a "
                "small noise share can be exposed); use local or dp-sgd",
            )

    @property
    def accountant(self) -> str:
        """The accountant that governs the ledger.

        The distributed discrete Gaussian is bounded in zCDP, which the RDP accountant
        composes exactly; the PLD accountant would treat it as a Gaussian, unproven.
        """
        if self.privacy.mode == "distributed" and self.secagg.enabled:
            return "rdp"
        return self.privacy.accountant

    def path(self, relative: str) -> Path:
        """``relative`` resolved against the config file's folder."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else Path(self.base_dir or ".") / p


def load_config(path: str | Path) -> Config:
    """Read and check a daemon config file; ``ConfigError`` names any bad key."""
    path = Path(path)
    raw = read_toml(path)
    check(
        "base_dir" not in raw,
        "base_dir",
        "is not a setting (paths are relative to the config file)",
    )
    config = parse(Config, raw)
    return dataclasses.replace(config, base_dir=str(path.parent.resolve()))


DEFAULT_TEMPLATE = """\
# p2pfed peer configuration for {name}.
# Relative paths are resolved against this file's folder. Every key is optional except
# [node] name; unknown keys are refused, so a typo never goes unnoticed.

[node]
name = "{name}"
identity = "identity.key"      # Ed25519 key, mode 0600; never share it
state_dir = "state"            # checkpoints, ledger, audit log, status
log_json = false               # one JSON object per log line
log_level = "info"

[network]
listen = "/ip4/0.0.0.0/tcp/4001"   # open this TCP port to consortium members only
roster = "roster.json"             # the consortium's signed member list
bootstrap = []                     # multiaddrs of members to dial first

[rounds]
mode = "ring"                  # ring (exact average) or gossip (neighbours in a topology)
topology = "exponential"       # for gossip: see `p2pfed topology list`
rounds = 20
min_peers = 2                  # rounds start only when this many members are reachable
round_timeout_s = 120.0        # start-up and catch-up wait, and the longest stage deadline
# stage_timeout_min_s = 0      # shortest stage deadline (0: min(10 s, round_timeout_s / 4))
# stage_timeout_max_s = 0      # longest (0: round_timeout_s); deadlines follow the measured
# link_mbps = 100.0            # ...round cost, from this link rate until one is measured
robust = "off"                 # clear gossip: "clipped-gossip" bounds a Byzantine neighbour
byzantine_neighbours = 1       # ...the clipping radius allows for this many per member
weighting = "uniform"          # "examples": FedAvg's mean weighted by rows (ring, privacy off)
max_examples = 10000           # ...a member's rows count up to this many

[model]
kind = "logistic"              # logistic, mlp, or module:factory
# factory = "my_models:resnet"  # your own model: a function returning a torch nn.Module
# args = {{ width = 64 }}        # ...called with these keyword arguments
# torchscript = "model.pt"     # or a TorchScript file (instead of kind and factory)
hidden = [32]                  # mlp hidden layer widths
seed = 0                       # every member must use the same seed

[data]
builtin = "breast_cancer"      # or: path = "data/patients.csv" (and remove builtin)
# loader = "my_data:images"    # or a function returning a torch Dataset of (x, y) pairs
label_column = "label"
feature_columns = []           # empty: every column but the label
test_fraction = 0.2            # held out locally for evaluation

[schema]                       # the consortium's declared data schema
features = []                  # empty: taken from the data
labels = [0, 1]

[study]
protocol = ""                  # the consortium's signed study protocol file, e.g. "protocol.json"

[validation]                   # the node refuses to join past these limits
min_samples = 30
max_missing_fraction = 0.0
max_label_skew = 0.45          # total-variation distance from the declared label shares
min_classes = 1

[training]
local_epochs = 1
batch_size = 32
learning_rate = 0.1
optimizer = "sgd"              # sgd or adam
fedprox_mu = 0.0               # > 0 adds (mu/2)|w - w_global|^2 against client drift
personal_prefixes = []         # parameter-name prefixes that never leave this node

[privacy]
mode = "distributed"           # distributed, local, dp-sgd (per patient), or off
clip_norm = 1.0                # L2 bound S on each update (dp-sgd: on each example's gradient)
noise_multiplier = 1.0         # sigma: noise std is sigma * S (split across members)
target_epsilon = 8.0           # > 0: pick sigma so all rounds spend at most this epsilon
sample_rate = 1.0              # dp-sgd: Poisson rate of each local step
steps_per_round = 1            # for `privacy report`: dp-sgd local steps per round
delta = 1e-5
epsilon_budget = 10.0          # the node refuses any release past this
accountant = "pld"             # pld or rdp (distributed + secagg: rdp governs)
ledger = "state/privacy.ledger"

[secagg]
enabled = true
threshold = 0                  # Shamir shares to recover a dropped member; 0 = a majority
collusion = 1                  # members assumed to pool what they see (threat model's c)
min_contributors = 0           # fewest inputs any unmasked sum holds; 0 = collusion + 2
bits = 32                      # ring Z_2^bits
clip_range = 8.0

[governance]
accuracy_drop = 0.05           # drift alert when accuracy falls this much
psi_major = 0.2                # drift alert when a feature's PSI exceeds this

[metrics]
port = 0                       # Prometheus /metrics and the dashboard at /; 0 = off
host = "127.0.0.1"             # off loopback, dashboard_token_file is required
dashboard_token_file = ""      # a file with one token line; clients send it as Bearer
"""


def render_default(name: str) -> str:
    """The commented ``config.toml`` that ``p2pfed init`` writes."""
    return DEFAULT_TEMPLATE.format(name=name.replace('"', ""))
