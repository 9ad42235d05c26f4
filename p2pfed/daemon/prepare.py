"""Start-up checks: everything that can fail on bad input, before the node goes on the network.

Theory of operation: ``prepare`` checks the config, the identity key (permissions), the
roster (signatures, expiry, rollback, membership), the study protocol (signed by the
roster's admins, matching the config: ``daemon.study``), the listen address, the secure-
aggregation floors, the privacy ledger (integrity, anchoring, budget, whether the rounds
still to run fit) and the data (loading, schema and validation report), so a bad
installation stops with one clear sentence and the audit log never records a start that
could not run. It plans σ once (the target-ε search can take seconds) and hands every
checked part to ``serve`` in one ``Prepared``. ``p2pfed run`` asks for the ledger and σ
later (``plan_privacy=False``, then ``with_privacy_plan``): the accountants take seconds
to load and compose, and the node checks them while it listens, before it takes part in
anything or its audit log records a start (``daemon.serve``).
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

import topologies
from p2pfed.collectives.secure_gossip import check_groups
from p2pfed.config import Config
from p2pfed.daemon.study import apply_study, load_study
from p2pfed.errors import BudgetExceededError, ConfigError, DataError
from p2pfed.governance import ledger_anchors
from p2pfed.identity import Identity, Role, RosterGate, StudyProtocol
from p2pfed.lifecycle import load_audit_salt
from p2pfed.node.files import CHECKPOINT
from p2pfed.privacy import PrivacyLedger, noise_multiplier_for
from p2pfed.privacy.accountants import Accountant, make_accountant
from p2pfed.privacy.calibrate import releases_within_budget
from p2pfed.privacy.ledger_format import Anchor
from p2pfed.secagg.compression import compression_refusal
from p2pfed.secagg.params import CohortPlan, SecAggConfig, plan_cohort
from p2pfed.training.data import Dataset, load_builtin, load_table, train_test_split
from p2pfed.training.loaders import load_reference
from p2pfed.training.validation import Schema, Thresholds, ValidationReport, validate

log = logging.getLogger("p2pfed.daemon")

AUDIT_FILE = "audit.jsonl"
VALIDATION_FILE = "validation.json"


@dataclass
class Prepared:
    """Everything checked and loaded before the node goes on the network."""

    config: Config
    identity: Identity
    gate: RosterGate
    train: Dataset
    test: Dataset
    report: ValidationReport
    state_dir: Path
    ledger_anchors: tuple[Anchor, ...] = ()
    audit_salt: bytes = b""
    sigma: float = 0.0
    """The noise multiplier the node will use (planned once: the search can take seconds)."""
    protocol: StudyProtocol | None = None
    """The verified study protocol (``[study] protocol``); its hash names the session."""
    privacy_planned: bool = False
    """Whether the ledger is checked and ``sigma`` planned (``with_privacy_plan``)."""


def parse_listen(listen: str) -> tuple[str, int]:
    """``/ip4/HOST/tcp/PORT`` → (HOST, PORT); ``ConfigError`` naming the key otherwise."""
    parts = listen.strip("/").split("/")
    if len(parts) != 4 or parts[0] not in ("ip4", "ip6") or parts[2] != "tcp":
        raise ConfigError(f"[network] listen {listen!r} must look like /ip4/0.0.0.0/tcp/4001")
    try:
        port = int(parts[3])
    except ValueError:
        raise ConfigError(f"[network] listen port {parts[3]!r} is not a number") from None
    return parts[1], port


def check_port_free(host: str, port: int) -> None:
    """Bind and release ``host:port`` as the transport will; ``ConfigError`` if it cannot.

    Run in ``prepare``, so a port in use stops the node with one sentence before the audit
    log records a start (the transport's own failure arrives inside an exception group).
    """
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As trio's listeners do, so a port left in TIME_WAIT by our own last run is not "in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"[network] listen: cannot listen on {host} port {port} ({exc.strerror}); "
                "another process holds it (a second daemon?) or the address is not this machine's"
            ) from None


def load_data(config: Config) -> Dataset:
    """The node's local data set, from a CSV or Parquet file, a built-in set or a loader."""
    d = config.data
    if d.builtin:
        return load_builtin(d.builtin)
    if d.loader:
        return load_reference(d.loader, dict(d.args))
    return load_table(config.path(d.path), d.label_column, list(d.feature_columns) or None)


def normalisation(
    train: Dataset, center: tuple[float, ...] = (), scale: tuple[float, ...] = ()
) -> tuple[NDArray[Any], NDArray[Any]]:
    """The per-feature centre and scale ``standardise`` applies (also written on export)."""
    if center:
        if len(center) != train.n_features:
            raise ConfigError(
                f"[schema] center has {len(center)} entries for {train.n_features} features"
            )
        return np.array(center, dtype=np.float32), np.array(scale, dtype=np.float32)
    mean = np.nanmean(train.x, axis=0)
    std = np.nanstd(train.x, axis=0)
    std[~(std > 1e-8)] = 1.0
    return mean, std


def standardise(
    train: Dataset, test: Dataset, center: tuple[float, ...] = (), scale: tuple[float, ...] = ()
) -> tuple[Dataset, Dataset]:
    """Z-score both parts with the schema's agreed centre and scale, else local statistics.

    Agreed constants give every member the same input space; local statistics (no data
    leaves the node either way) differ between sites when their populations differ.
    """
    mean, std = normalisation(train, center, scale)

    def rescale(d: Dataset) -> Dataset:
        return d.with_x(((d.x - mean) / std).astype(np.float32), d.name)

    return rescale(train), rescale(test)


def secagg_plan(config: Config, members: Sequence[str]) -> CohortPlan:
    """The secure-aggregation plan ``[secagg]`` gives these members; one sentence if unsafe."""
    s = config.secagg
    try:
        return plan_cohort(
            SecAggConfig(
                "plan-check",  # the floors do not depend on the consortium or round
                0,
                1,
                s.bits,
                threshold=s.threshold or None,
                collusion=s.collusion,
                min_contributors=s.min_contributors or None,
            ),
            frozenset(members),
        )
    except ConfigError as exc:
        raise ConfigError(f"[secagg] with {len(members)} members: {exc}") from None


def prepare(
    config: Config,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    *,
    plan_privacy: bool = True,
) -> Prepared:
    """Check key, roster, listen address, membership, data and ledger, before any network use.

    With ``plan_privacy=False`` the ledger and σ are left to ``with_privacy_plan``.
    """
    state_dir = config.path(config.node.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    identity = Identity.load(config.path(config.node.identity))
    gate = RosterGate.open(
        config.path(config.network.roster), state=state_dir / "roster-state.json", clock=now
    )
    if not gate(identity.peer_id):
        raise ConfigError(
            f"this node ({identity.peer_id}) is not a member of roster version "
            f"{gate.roster.version}; ask the consortium admins to add it"
        )
    protocol = load_study(config, gate.roster)
    if protocol is not None:
        config = apply_study(config, protocol)
    check_compression(config)
    check_port_free(*parse_listen(config.network.listen))
    check_membership(config, [m.peer_id for m in gate.roster.members if m.role is Role.MEMBER])
    # The data first: a site whose data cannot join hears that alone, before the budget's
    # calibration says anything.
    report, train, test = validated_data(config, state_dir)
    salt = load_audit_salt(config, state_dir / AUDIT_FILE)
    prepared = Prepared(
        config, identity, gate, train, test, report, state_dir, audit_salt=salt, protocol=protocol
    )
    return with_privacy_plan(prepared) if plan_privacy else prepared


def with_privacy_plan(prepared: Prepared) -> Prepared:
    """``prepared`` with its ledger checked (integrity, anchoring, budget) and σ planned."""
    config = prepared.config
    anchors, sigma = check_ledger(config, prepared.state_dir)
    if sigma is None:
        sigma = noise_multiplier(config)
    return replace(prepared, ledger_anchors=anchors, sigma=sigma, privacy_planned=True)


def check_compression(config: Config) -> None:
    """Refuse a ``[rounds] compression`` the rest of the config cannot honour."""
    r = config.rounds
    why = compression_refusal(
        r.compression, r.mode, config.secagg.enabled, config.privacy.mode, r.weighting
    )
    if why is not None:
        raise ConfigError(f"[rounds] compression = {r.compression!r} {why}")


def check_membership(config: Config, members: Sequence[str]) -> None:
    """Refuse a membership too small for ``[secagg]`` or ``[rounds] min_peers``."""
    if config.secagg.enabled and len(members) < 3:
        raise ConfigError(
            f"[secagg] enabled needs at least 3 members (the roster has {len(members)}): a sum "
            "of two would reveal the other's update"
        )
    if config.secagg.enabled:
        plan = secagg_plan(config, members)
        if config.rounds.mode == "gossip":
            check_groups(
                topologies.build(config.rounds.topology, len(members)), plan.min_contributors
            )
    if config.rounds.min_peers > len(members):
        raise ConfigError(
            f"[rounds] min_peers = {config.rounds.min_peers} exceeds the roster's "
            f"{len(members)} members"
        )


def check_ledger(config: Config, state_dir: Path) -> tuple[tuple[Anchor, ...], float | None]:
    """The ledger's anchors, and σ if the ledger had to be read to check the budget.

    Integrity, anchoring and budget now, before the network: a corrupted, cut or
    rolled-back ledger stops the node, and so do rounds that cannot fit what is left.
    """
    p = config.privacy
    if p.mode == "off":
        return (), None
    found = ledger_anchors.collect(state_dir / CHECKPOINT, state_dir / AUDIT_FILE)
    if not config.path(p.ledger).exists():
        found.refuse_missing(config.path(p.ledger))
        # A first start spends from an empty ledger: rounds that cannot fit are refused now,
        # not after the budget has gone on the first few of them.
        sigma = noise_multiplier(config)
        fresh = FreshBudget(p.epsilon_budget, p.delta, make_accountant(config.accountant))
        check_rounds_fit(config, fresh, completed_round(state_dir), sigma)
        return found.heads, sigma
    with PrivacyLedger(
        config.path(p.ledger),
        p.epsilon_budget,
        p.delta,
        config.accountant,
        read_only=True,
        anchors=found.heads,
    ) as ledger:
        if ledger.remaining_epsilon() <= 0:
            raise BudgetExceededError(
                f"the privacy budget ε = {p.epsilon_budget:g} is spent "
                f"({ledger.spent_epsilon():.4g} recorded in {ledger.path}); nothing more "
                "may be released"
            )
        sigma = noise_multiplier(config)
        check_rounds_fit(config, ledger, completed_round(state_dir), sigma)
    return found.heads, sigma


def validated_data(config: Config, state_dir: Path) -> tuple[ValidationReport, Dataset, Dataset]:
    """Load, validate (the report saved beside the state) and split the node's data."""
    data = load_data(config)
    schema = Schema(
        features=config.schema.features or data.feature_names,
        labels=config.schema.labels,
        types=config.schema.types,
        label_distribution=config.schema.label_distribution,
    )
    v = config.validation
    report = validate(
        data,
        schema,
        Thresholds(v.min_samples, v.max_missing_fraction, v.max_label_skew, v.min_classes),
    )
    report.save(state_dir / VALIDATION_FILE)
    if not report.passed:
        raise DataError(report.summary() + "; this node will not join")
    train, test = train_test_split(
        data, config.data.test_fraction, np.random.default_rng(config.model.seed)
    )
    train, test = standardise(train, test, config.schema.center, config.schema.scale)
    return report, train, test


def completed_round(state_dir: Path) -> int:
    """The last round this node's checkpoint holds (−1 before the first)."""
    state = ledger_anchors.checkpoint_state(state_dir / CHECKPOINT)
    return -1 if state is None else int(state["round"])


def release_shape(config: Config) -> tuple[int, float]:
    """(accountant steps, Poisson rate) one round's release composes under ``[privacy]``."""
    p = config.privacy
    if p.mode == "dp-sgd":
        t = config.training
        return t.local_steps or t.local_epochs * math.ceil(1.0 / p.sample_rate), p.sample_rate
    return 1, 1.0


@dataclass(frozen=True)
class FreshBudget:
    """What ``check_rounds_fit`` asks of a ledger, for one that holds no release yet."""

    budget_epsilon: float
    delta: float
    empty: Accountant

    def accountant(self) -> Accountant:
        return self.empty.copy()

    def remaining_epsilon(self) -> float:
        return self.budget_epsilon

    def rounds_left(self, noise_multiplier: float, sample_rate: float, steps: int) -> int:
        return releases_within_budget(
            self.empty, self.budget_epsilon, self.delta, noise_multiplier, sample_rate, steps
        )


def check_rounds_fit(
    config: Config, ledger: PrivacyLedger | FreshBudget, completed: int, sigma: float
) -> None:
    """Refuse to start when the rounds still to run cannot fit what is left of the budget.

    Checked for local and DP-SGD noise, whose releases the ledger charges exactly as planned
    here; distributed releases are charged against colluders by their own plan.
    """
    p = config.privacy
    to_go = config.rounds.rounds - (completed + 1)
    if p.mode not in ("local", "dp-sgd") or to_go <= 0:
        return
    steps, q = release_shape(config)
    after = ledger.accountant()
    after.step(noise_multiplier=sigma, sample_rate=q, steps=steps * to_go)
    if after.get_epsilon(ledger.delta) <= ledger.budget_epsilon:
        return  # one composition; the search for how many fit only when they do not
    fits = ledger.rounds_left(sigma, q, steps)
    if fits < to_go:
        fix = f"lower [rounds] rounds to {completed + 1 + fits}, or raise σ" if fits else "raise σ"
        raise BudgetExceededError(
            f"the {to_go} rounds still to run at σ = {sigma:.3g} need more than the ε "
            f"{ledger.remaining_epsilon():.3g} left of the budget {p.epsilon_budget:g} (only "
            f"{fits} fit): {fix} (set [privacy] target_epsilon, or see `p2pfed privacy plan`)"
        )


def noise_multiplier(config: Config) -> float:
    """σ from the config, or, with ``target_epsilon``, the smallest σ that meets it.

    The plan covers every configured round: one release per round (q = 1) for update-level
    DP, or the local DP-SGD steps of each round (Poisson rate ``sample_rate``).
    """
    p = config.privacy
    if p.target_epsilon <= 0:
        return p.noise_multiplier
    per_round, q = release_shape(config)
    sigma = noise_multiplier_for(
        p.target_epsilon, p.delta, q, config.rounds.rounds * per_round, config.accountant
    )
    log.info(
        "noise multiplier %.4f meets ε = %g over %d rounds (%d steps each, q = %g)",
        sigma,
        p.target_epsilon,
        config.rounds.rounds,
        per_round,
        q,
    )
    return sigma
