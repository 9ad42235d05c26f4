"""The consistency check before any reveal: who signed which survivor set.

Theory of operation (Bonawitz et al. 2017, ConsistencyCheck, without a server): double
masking is safe only if every honest peer reveals for the same survivor set S. Whoever forms
the sum could show S1 to some peers and S2 to others; then peers shown S1 reveal self-mask
shares of a peer V ∈ S1 while peers shown S2 ∌ V reveal shares of V's pair secret, and a
coalition holding t of each rebuilds V's input. So after the sum each survivor signs the set
it was given and sends the signature to the cohort, and reveals only once a quorum of the
survivors of *its* set signed that very set. The quorum exceeds (n + c)/2, so two quorums
share more than c peers — at least one honest peer, which signs once: no two sets ever both
reach a quorum, and honest reveals are tied to one S. A signer seen on two sets is named.

``SurvivorVotes`` is the bookkeeping, pure and I/O-free; ``SecAggPeer`` drives it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from p2pfed.secagg.params import SecAggConfig
from p2pfed.secagg.primitives import domain


def survivor_set_signed_bytes(config: SecAggConfig, digest: bytes) -> bytes:
    """What a survivor signs: the survivor-set digest, bound to consortium and round."""
    return domain("survivor-set", config.consortium, config.round, digest)


class SurvivorVotes:
    """The survivor set each peer signed in one round (at most one per honest peer)."""

    def __init__(self) -> None:
        self._signed: dict[str, bytes] = {}
        # Signers per digest, so counting a quorum is a set intersection, not a scan of
        # the cohort for every vote (O(n) votes per peer, each counted in O(1) amortised).
        self._by_digest: dict[bytes, set[str]] = {}
        self.equivocators: set[str] = set()

    def add(self, signer: str, digest: bytes) -> bool:
        """Record ``signer``'s signature on ``digest``; False if it signed another set before."""
        prior = self._signed.setdefault(signer, digest)
        if prior != digest:
            self.equivocators.add(signer)
            return False
        self._by_digest.setdefault(digest, set()).add(signer)
        return True

    def signers(self, digest: bytes, among: Iterable[str]) -> frozenset[str]:
        """The peers of ``among`` that signed ``digest`` and no other set."""
        signed = self._by_digest.get(digest, set()) - self.equivocators
        return frozenset(signed.intersection(among))

    def dissenters(self, digest: bytes, among: Iterable[str]) -> list[str]:
        """The peers of ``among`` that signed a set other than ``digest`` (sorted)."""
        others = self._signed.keys() - self._by_digest.get(digest, set())
        return sorted((others | self.equivocators).intersection(among))

    def unreachable(
        self, digest: bytes, survivors: frozenset[str], excluded: Collection[str], quorum: int
    ) -> str | None:
        """Why a quorum of ``survivors`` can no longer sign ``digest``; None while it can."""
        live = survivors - set(excluded)
        others = self.dissenters(digest, survivors)
        if len(live - set(others)) >= quorum:
            return None
        parts = (
            f"{others} signed another survivor set" if others else "",
            f"{sorted(survivors & set(excluded))} are excluded"
            if survivors & set(excluded)
            else "",
        )
        return (
            f"fewer than the quorum of {quorum} survivors can sign this survivor set ("
            + "; ".join(part for part in parts if part)
            + "); nothing was revealed"
        )

    def shortfall(self, digest: bytes, survivors: frozenset[str], quorum: int) -> str:
        """Why the consistency stage ended at its deadline without a quorum."""
        signed = self.signers(digest, survivors)
        others = self.dissenters(digest, survivors)
        return (
            f"only {len(signed)} survivors signed this survivor set before the deadline, "
            f"the quorum is {quorum}"
            + (f" ({others} signed another set)" if others else "")
            + "; nothing was revealed"
        )
