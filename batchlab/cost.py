"""The analytic cost of one call: FLOPs and bytes by kind. A leaf module: the roofline,
the families and the reports all use it."""

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class Cost:
    """Analytic cost of one call: FLOPs and bytes moved, by kind (REFERENCE 2)."""

    flops: float
    weight_bytes: float
    activation_bytes: float
    state_bytes: float = 0.0  # e.g. a KV cache read and written
    # Bytes one device sends to others (an all_to_all, say): over the interconnect, not
    # counted in total_bytes; 0 on one device.
    collective_bytes: float = 0.0

    @property
    def total_bytes(self) -> float:
        return self.weight_bytes + self.activation_bytes + self.state_bytes

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved."""
        return self.flops / self.total_bytes if self.total_bytes else float("inf")

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {
            "total_bytes": self.total_bytes,
            "intensity": self.intensity,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "Cost":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})
