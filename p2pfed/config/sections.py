"""The tables of ``config.toml``, one frozen dataclass each, with their own checks.

Theory of operation: ``p2pfed.settings`` parses each table onto its dataclass, so the
accepted keys are exactly these fields; each ``validate`` checks the table on its own (checks
across tables are ``Config.validate``'s). Nothing here imports torch or libp2p, so a bad
config is refused before either loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pfed.settings import check, open_unit, positive
from p2pfed.training.data import BUILTIN_DATASETS
from p2pfed.training.options import BUILTIN_MODELS

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
    #: With relays in the roster: upgrade relayed links to direct ones through the NATs
    #: (DCUtR, transport.holepunch) where they allow it.
    hole_punch: bool = True

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
        # Imported here: the collectives (trio) and the accountants (scipy) load only for a
        # config that got this far, so a missing file or a typo is refused at once.
        from p2pfed.collectives.robust import ROBUST_RULES as rules

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
        from p2pfed.privacy.accountants import ACCOUNTANT_KINDS  # scipy: see RoundsSection

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
