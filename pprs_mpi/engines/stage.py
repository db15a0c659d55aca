"""The static facts every engine shares: where the nodes live (`Wiring`) and how the noisy copies are
drawn and grouped (`Sampling`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pprs_mpi.graph import Graph
from pprs_mpi.schedule import microbatch_samples, n_microbatches


class Wiring:
    """Static facts of a placement: which stage owns each node, and the edges numbered once."""

    def __init__(self, graph: Graph, stages: list[tuple[str, ...]]):
        self.graph, self.stages = graph, [tuple(s) for s in stages]
        self.stage_of = {graph.root: 0, **{n: s for s, names in enumerate(self.stages) for n in names}}
        self.edges = graph.edges()
        self.edge_index = {edge: i for i, edge in enumerate(self.edges)}
        self.node_index = {name: i for i, name in enumerate(graph.order)}

    @property
    def n_edges(self) -> int:
        return len(self.edge_index)

    def crosses(self, parent: str, child: str) -> bool:
        return self.stage_of[parent] != self.stage_of[child]


@dataclass(frozen=True)
class Sampling:
    """How the K noisy copies θ + γ_t X_k are drawn and grouped into microbatches."""

    K: int
    gamma: float  # γ, or the base of `gamma_schedule`
    seed: int
    microbatch_size: int
    noise_on_device: bool = True  # False: draw on the host (bitwise the CPU noise) and copy to the GPU
    gamma_schedule: Callable[[int], float] | None = None  # γ_t (see `parameters`); None: γ at every t
    antithetic: bool = False  # X_{2j+1} = −X_{2j} (see `noise`)

    def gamma_at(self, t: int) -> float:
        """γ_t, the smoothing radius of iteration t."""
        return self.gamma if self.gamma_schedule is None else self.gamma_schedule(t)

    @property
    def n_microbatches(self) -> int:
        return n_microbatches(self.K, self.microbatch_size)

    def samples(self, mb: int) -> range:
        return microbatch_samples(self.K, self.microbatch_size, mb)
