"""After the sum: is the survivor set safe to unmask, what to reveal, and the unmasking.

Theory of operation: given the contributor set S of a masked sum and every peer's committed
mask set, ``check_survivors`` refuses (returning the reason) a set that is too small, names
outsiders, lacks a commitment or a key, holds a pair that disagrees on its mask, falls apart
into groups with no pair mask between them, or leaves some needed secret with fewer than t
surviving holders — before anything is revealed. ``survivors_digest`` names S on the wire;
``plan_reveal`` picks, per dealer, the self-seed share of a survivor or the pair-secret
share of a dropped peer, never both. ``Recovery`` takes the shares revealed for one S (and
refuses reveals for another S, from non-survivors, or of shares that were not due),
rebuilds each needed secret from t of them, checks it against the dealer's seed commitment
or advertised mask key, names liars by the dealer's share signatures, and finally removes
the recovered masks from the sum.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping

from p2pfed.errors import LocalProtocolError, ReasonCode
from p2pfed.identity.keys import verify_signature
from p2pfed.secagg import shamir
from p2pfed.secagg.admission import Refusal
from p2pfed.secagg.dealing import share_signed_bytes
from p2pfed.secagg.messages import AdvertiseKeys, Reveal, RevealedShare, ShareKind
from p2pfed.secagg.params import CohortPlan, SecAggConfig
from p2pfed.secagg.primitives import (
    AgreementKeyPair,
    MaskExpander,
    UIntVector,
    agree,
    commitment,
    domain,
    pair_mask_key,
    self_mask_key,
)

Problem = tuple[ReasonCode, str]
Reject = Callable[[str, ReasonCode, str], None]
"""Records a rejection of a peer and excludes it from the round."""


def survivors_digest(config: SecAggConfig, survivors: Iterable[str]) -> bytes:
    """SHA-256 naming a survivor set for this round; reveals for another set are refused."""
    return hashlib.sha256(
        domain("survivors", config.consortium, config.round, *sorted(survivors))
    ).digest()


def plan_reveal(
    held: Iterable[str], survivors: frozenset[str], dropped: frozenset[str]
) -> dict[str, ShareKind]:
    """Which share to reveal for each dealer whose shares we hold.

    The seed share if the dealer survived, the pair-secret share if it dropped and its masks
    are in the sum, nothing otherwise.

    Raises ``LocalProtocolError`` for a request that would reveal both secrets of a peer.
    """
    both = survivors & dropped
    if both:
        raise LocalProtocolError(
            f"refusing to reveal both the self-mask seed and the pair secret of {sorted(both)}"
        )
    plan = {}
    for dealer in held:
        if dealer in survivors:
            plan[dealer] = ShareKind.SELF_SEED
        elif dealer in dropped:
            plan[dealer] = ShareKind.PAIR_SECRET
    return plan


def _components(survivors: frozenset[str], commits: Mapping[str, frozenset[str]]) -> int:
    """Number of connected groups of ``survivors`` under their pair masks."""
    unseen = set(survivors)
    groups = 0
    while unseen:
        groups += 1
        frontier = [unseen.pop()]
        while frontier:
            for other in commits[frontier.pop()] & unseen:
                unseen.discard(other)
                frontier.append(other)
    return groups


def dropped_of(survivors: frozenset[str], commits: Mapping[str, frozenset[str]]) -> frozenset[str]:
    """The peers outside ``survivors`` whose pair masks sit in the survivors' vectors."""
    return frozenset().union(*(commits[v] for v in survivors)) - survivors


def _mask_problem(
    survivors: frozenset[str], commits: Mapping[str, frozenset[str]]
) -> Problem | None:
    unknown = sorted(v for v in survivors if v not in commits)
    if unknown:
        return ReasonCode.PROTOCOL_VIOLATION, f"no input commitment from contributors {unknown}"
    for v in survivors:
        for u in commits[v] & survivors:
            if v not in commits[u]:
                return (
                    ReasonCode.PROTOCOL_VIOLATION,
                    f"contributors {v!r} and {u!r} disagree on their pair mask",
                )
    groups = _components(survivors, commits)
    if groups > 1:
        # Once seeds are revealed, a group of survivors with no pair mask to anyone
        # outside it is unmasked by any partial sum over it (a ring all-reduce forms such
        # partial sums), so its members' inputs would leak.
        return (
            ReasonCode.DROPPED,
            f"the survivors' pair masks fall apart into {groups} groups; nothing was revealed",
        )
    return None


def check_survivors(
    plan: CohortPlan,
    me: str,
    survivors: frozenset[str],
    commits: Mapping[str, frozenset[str]],
    advertised: Iterable[str],
) -> Problem | None:
    """Why the sum over ``survivors`` must not be unmasked, or None if it may."""
    if not survivors <= set(plan.peers):
        return ReasonCode.UNKNOWN_PEER, "the masked sum names contributors outside the cohort"
    if me not in survivors:
        return ReasonCode.DROPPED, "this peer's masked input is not in the sum"
    if len(survivors) < plan.min_survivors:
        return (
            ReasonCode.DROPPED,
            f"only {len(survivors)} peers contributed, at least {plan.min_survivors} "
            f"are needed (min_contributors {plan.min_contributors} against "
            f"{plan.collusion} colluding member(s), consistency quorum "
            f"{plan.quorum}); nothing was revealed",
        )
    problem = _mask_problem(survivors, commits)
    if problem is not None:
        return problem
    dropped = dropped_of(survivors, commits)
    keyless = sorted((survivors | dropped) - set(advertised))
    if keyless:
        return (
            ReasonCode.PROTOCOL_VIOLATION,
            f"the keys of {keyless} never arrived, so their masks cannot be removed",
        )
    for dealer in sorted(survivors | dropped):
        holding = len(plan.holders(dealer) & survivors)
        if holding < plan.threshold:
            return (
                ReasonCode.DROPPED,
                f"only {holding} surviving holders of {dealer!r}'s shares, threshold is "
                f"{plan.threshold}; nothing was revealed",
            )
    return None


class Recovery:
    """The secrets to rebuild for one survivor set, from the shares revealed for it."""

    def __init__(
        self,
        config: SecAggConfig,
        plan: CohortPlan,
        identities: Mapping[str, bytes],
        adverts: Mapping[str, AdvertiseKeys],
        survivors: frozenset[str],
        commits: Mapping[str, frozenset[str]],
    ) -> None:
        """``survivors`` passed ``check_survivors`` against ``commits`` and ``adverts``."""
        self.config = config
        self.plan = plan
        self.survivors = survivors
        self.digest = survivors_digest(config, survivors)
        self.dropped = dropped_of(survivors, commits)
        self._identities = identities
        self._adverts = adverts
        self._commits = {v: commits[v] for v in survivors}
        self.needed = {v: ShareKind.SELF_SEED for v in survivors}
        self.needed |= {d: ShareKind.PAIR_SECRET for d in self.dropped}
        self.recovered: dict[str, bytes] = {}
        self.bad_dealer: str | None = None
        self._revealed: dict[tuple[str, ShareKind], dict[str, RevealedShare]] = {}
        self._touched: set[str] = set()
        self._weights: dict[tuple[int, ...], tuple[int, ...]] = {}  # Lagrange, per x set

    def take(self, sender: str, reveal: Reveal) -> Refusal | None:
        """Keep ``sender``'s shares for this set, or say why they are refused (none kept)."""
        if sender not in self.survivors:
            return Refusal(ReasonCode.PROTOCOL_VIOLATION, "reveal from a non-survivor")
        if reveal.survivors_digest != self.digest:
            return Refusal(ReasonCode.PROTOCOL_VIOLATION, "reveal for another survivor set", True)
        for share in reveal.shares:
            if self.needed.get(share.dealer) is not share.kind:
                return Refusal(
                    ReasonCode.PROTOCOL_VIOLATION,
                    f"revealed a {share.kind.name} share of {share.dealer!r} that was not due",
                    True,
                )
        for share in reveal.shares:
            self._revealed.setdefault((share.dealer, share.kind), {})[sender] = share
            self._touched.add(share.dealer)
        return None

    def missing(self) -> list[str]:
        """The dealers whose secrets are not rebuilt yet (sorted)."""
        return sorted(d for d in self.needed if d not in self.recovered)

    def recover(self, excluded: Mapping[str, ReasonCode], reject: Reject) -> bool:
        """Rebuild every needed secret that has t shares; True when all are recovered.

        Only dealers with new shares since the last call are looked at, so a peer does
        O(shares) work over the whole unmask stage, not O(secrets) per message. Dealers
        whose chosen shares sit at the same x coordinates are rebuilt together, with one
        set of Lagrange weights (``shamir.combine_many``). A revealer caught lying is passed
        to ``reject``; a dealer whose own shares do not rebuild its secret is rejected too
        and left in ``bad_dealer`` (the round must abort).
        """
        touched, self._touched = self._touched, set()
        pending = sorted(touched - self.recovered.keys())
        while pending:
            groups: dict[tuple[int, ...], list[tuple[str, dict[str, RevealedShare]]]] = {}
            for dealer in pending:
                revealed = self._revealed.get((dealer, self.needed[dealer]), {})
                if len(revealed) < self.plan.threshold:
                    continue  # exclusions only shrink it: skip the filtering below
                shares = {h: s for h, s in revealed.items() if h not in excluded}
                if len(shares) < self.plan.threshold:
                    continue
                chosen = sorted(shares, key=self.plan.x)[: self.plan.threshold]
                xs = tuple(self.plan.x(h) for h in chosen)
                groups.setdefault(xs, []).append((dealer, {h: shares[h] for h in chosen}))
            retry = []
            for xs, items in groups.items():
                for (dealer, _), secret in zip(items, self._combine(xs, items), strict=True):
                    if secret is not None:
                        self.recovered[dealer] = secret
                        continue
                    kind = self.needed[dealer]
                    every = self._revealed[(dealer, kind)]
                    shares = {h: s for h, s in every.items() if h not in excluded}
                    if not self._blame(dealer, kind, shares, reject):
                        return False
                    retry.append(dealer)
            pending = retry
        return len(self.recovered) == len(self.needed)

    def _combine(
        self, xs: tuple[int, ...], items: list[tuple[str, dict[str, RevealedShare]]]
    ) -> list[bytes | None]:
        """The checked secret of each dealer in ``items`` (None: it failed its check)."""
        # Rows are ordered like ``xs``: each ``chosen`` was built in x order.
        rows = [[s.share for s in chosen.values()] for _, chosen in items]
        c, r = self.config.consortium, self.config.round
        out: list[bytes | None] = []
        weights = self._weights.get(xs)
        if weights is None:
            weights = self._weights[xs] = shamir.lagrange_at_zero(xs)
        rebuilt = shamir.combine_many(xs, rows, weights)
        for (dealer, _), secret in zip(items, rebuilt, strict=True):
            if secret is not None:
                advert = self._adverts[dealer]
                if self.needed[dealer] is ShareKind.SELF_SEED:
                    good = commitment(secret, c, r, dealer) == advert.seed_commitment
                else:
                    good = AgreementKeyPair.from_secret(secret).public == advert.mask_public
                secret = secret if good else None
            out.append(secret)
        return out

    def _blame(
        self, dealer: str, kind: ShareKind, shares: Mapping[str, RevealedShare], reject: Reject
    ) -> bool:
        """A rebuilt secret failed its check: name the liars by the dealer's signatures.

        Returns True if some revealer was excluded (try again without it); otherwise the
        dealer itself dealt bad shares, which is excluded and named in ``bad_dealer``.
        """
        public = self._identities[dealer]
        liars = [
            h
            for h, s in shares.items()
            if not verify_signature(
                public, share_signed_bytes(self.config, dealer, h, kind, s.share), s.signature
            )
        ]
        for holder in liars:
            reject(holder, ReasonCode.BAD_SHARE, f"revealed a forged share of {dealer!r}")
        if liars:
            return True
        # Every share carries the dealer's signature, so the dealer itself dealt shares
        # that do not rebuild its committed secret.
        reject(dealer, ReasonCode.BAD_SHARE, "dealt inconsistent shares")
        self.bad_dealer = dealer
        return False

    def unmask(self, total: UIntVector, expander: MaskExpander) -> UIntVector:
        """Remove every recovered mask from ``total``, in place; returns it."""
        c, r = self.config.consortium, self.config.round
        removals = [(self_mask_key(self.recovered[v], c, r, v), -1) for v in sorted(self.survivors)]
        for v in sorted(self.survivors):
            for d in sorted(self._commits[v] & self.dropped):
                secret = agree(self.recovered[d], self._adverts[v].mask_public)
                removals.append((pair_mask_key(secret, c, r, v, d), -self.plan.sign(v, d)))
        expander.apply_many(total, removals)
        return total
