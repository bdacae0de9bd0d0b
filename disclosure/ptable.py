"""The perturbation table (ptable) of cell-key perturbation, as ONS used it for the 2021 Census tables.

Every counted unit carries a record key in 0…255 (``masking.record_keys``); a cell's key is the sum of its
units' record keys modulo 256, and the ptable maps (cell value, cell key) to the noise added to the cell.
The ptable is public (docs/disclosure.md prints it); what keeps the noise unknown is the cell key, which
needs the record keys, which need the source's secret.

Construction (``build_ptable``), with parameters ``max_noise`` D, ``variance`` V and ``smallest`` s (the
smallest count published other than 0; s = 3 means no 1s and 2s):

* For a cell value i, the published value j lies in [i − D, i + D], is never negative, and is 0 or ≥ s.
* Row i = 0 is "0 stays 0" (probability 1).
* Rows i ≥ s + D + 1 all share one symmetric noise distribution over −D…D: the discrete Gaussian
  exp(−d²/2σ²) with σ chosen so its variance is V.
* Rows 1 ≤ i ≤ s + D have the same shape restricted to the values allowed, exponentially tilted
  (exp(λ·j), λ by bisection) so that the mean is exactly i again: the maximum-entropy change of the
  shape that keeps the cell unbiased.
* Probabilities are multiples of 1/256 (the cell-key range), so each row is a partition of 0…255 into
  runs, one run per published value in ascending order. Rounding to 1/256 is done so that every row's
  mean stays *exactly* i (integer moves between neighbouring allowed values after largest-remainder
  rounding).

So: zeros stay zeros, no 1 … s−1 is ever published, every cell is unbiased (E[j] = i exactly under a
uniform cell key), and |noise| ≤ D. The same cell value with the same cell key always gets the same
noise: consistency across tables, releases and contracts comes from the keys, not from this table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

KEY_RANGE = 256


@dataclass(frozen=True)
class PTableRow:
    """For one cell value ``i``: the published values and how many of the 256 cell keys map to each."""

    i: int
    values: tuple[int, ...]  # published values j, ascending
    keys: tuple[int, ...]  # cell keys per value (sum 256); the run of value n starts at sum(keys[:n])

    def probability(self, j: int) -> float:
        return self.keys[self.values.index(j)] / KEY_RANGE if j in self.values else 0.0

    @property
    def mean(self) -> float:
        return sum(v * k for v, k in zip(self.values, self.keys, strict=True)) / KEY_RANGE

    @property
    def variance(self) -> float:
        mean = self.mean
        return sum(k * (v - mean) ** 2 for v, k in zip(self.values, self.keys, strict=True)) / KEY_RANGE

    def published(self, cell_key: int) -> int:
        """The published value for a cell key in 0…255."""
        bound = 0
        for value, keys in zip(self.values, self.keys, strict=True):
            bound += keys
            if cell_key < bound:
                return value
        raise ValueError("a cell key is an integer in 0…255")

    def to_dict(self) -> dict[str, Any]:
        return {"i": self.i, "j": list(self.values), "keys": list(self.keys)}


@dataclass(frozen=True)
class PTable:
    """A perturbation table: rows 0…``interior`` (the last row stands for every larger value, as noise)."""

    max_noise: int
    variance: float
    smallest: int
    rows: tuple[PTableRow, ...]

    @property
    def interior(self) -> int:
        """Cell values from this one up share the last row's noise distribution."""
        return len(self.rows) - 1

    def noise(self, value: int, cell_key: int) -> int:
        """The noise added to a cell of true count ``value`` with key ``cell_key`` (0…255)."""
        if value < 0:
            raise ValueError("a cell value is a count (never negative)")
        row = self.rows[min(value, self.interior)]
        return row.published(cell_key) - row.i

    def perturb(self, value: int, cell_key: int) -> int:
        return value + self.noise(value, cell_key)

    @property
    def expected_absolute_noise(self) -> float:
        """E|noise| for large cells (the interior row): the typical deviation a user should expect."""
        row = self.rows[self.interior]
        return sum(abs(v - row.i) * k for v, k in zip(row.values, row.keys, strict=True)) / KEY_RANGE

    @property
    def perturbed_share(self) -> float:
        """The share of large cells whose published value differs from the true one."""
        row = self.rows[self.interior]
        return 1 - row.probability(row.i)

    def parameters(self) -> dict[str, Any]:
        return {"key_range": KEY_RANGE, "max_noise": self.max_noise, "variance": self.variance,
                "smallest_published": self.smallest, "interior_from": self.interior,
                "expected_absolute_noise": round(self.expected_absolute_noise, 6),
                "perturbed_share": round(self.perturbed_share, 6)}

    def to_dict(self) -> dict[str, Any]:
        return {**self.parameters(), "rows": [r.to_dict() for r in self.rows]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PTable:
        rows = tuple(PTableRow(i=r["i"], values=tuple(r["j"]), keys=tuple(r["keys"])) for r in data["rows"])
        return cls(max_noise=data["max_noise"], variance=data["variance"], smallest=data["smallest_published"],
                   rows=rows)


def _sigma_for(variance: float, max_noise: int) -> float:
    """σ of the discrete Gaussian on −D…D whose variance is ``variance`` (bisection)."""
    d = np.arange(-max_noise, max_noise + 1, dtype=np.float64)

    def var(sigma: float) -> float:
        w = np.exp(-(d ** 2) / (2 * sigma ** 2))
        return float((w * d ** 2).sum() / w.sum())

    low, high = 1e-3, 1e3
    if not var(low) <= variance <= var(high):
        raise ValueError(f"variance {variance} is not reachable with noise of at most {max_noise}")
    for _ in range(200):
        mid = math.sqrt(low * high)
        if var(mid) < variance:
            low = mid
        else:
            high = mid
    return math.sqrt(low * high)


def _tilted(values: np.ndarray, i: int, sigma: float) -> np.ndarray:
    """The shape exp(−(j−i)²/2σ²) on ``values``, tilted by exp(λ·j) until its mean is exactly ``i``."""
    base = -((values - i) ** 2) / (2 * sigma ** 2)

    def mean(lam: float) -> float:
        w = base + lam * values
        w = np.exp(w - w.max())
        return float((w * values).sum() / w.sum())

    low, high = -50.0, 50.0
    if not mean(low) <= i <= mean(high):
        raise ValueError(f"no unbiased row for cell value {i}")
    for _ in range(200):
        mid = (low + high) / 2
        if mean(mid) < i:
            low = mid
        else:
            high = mid
    w = base + (low + high) / 2 * values
    w = np.exp(w - w.max())
    probabilities: np.ndarray = w / w.sum()
    return probabilities


def _quantised(values: np.ndarray, p: np.ndarray, i: int) -> np.ndarray:
    """Counts out of 256 close to ``p`` with Σ counts·values = 256·i exactly."""
    target = p * KEY_RANGE
    counts: np.ndarray = np.floor(target).astype(np.int64)
    for index in np.argsort(-(target - counts), kind="stable")[: KEY_RANGE - int(counts.sum())]:
        counts[index] += 1
    error = int((counts * values).sum()) - KEY_RANGE * i
    while error:
        best: tuple[float, int, int] | None = None
        for a in range(len(values)):
            if counts[a] == 0:
                continue
            b = a - 1 if error > 0 else a + 1
            if not 0 <= b < len(values) or abs(int(values[a] - values[b])) > abs(error):
                continue
            cost = (counts[a] - 1 - target[a]) ** 2 + (counts[b] + 1 - target[b]) ** 2 \
                - (counts[a] - target[a]) ** 2 - (counts[b] - target[b]) ** 2
            if best is None or cost < best[0]:
                best = (float(cost), a, b)
        if best is None:
            raise ValueError(f"cell value {i} cannot be perturbed without bias in steps of 1/{KEY_RANGE} with these "
                             "parameters; raise max_noise")
        _, a, b = best
        counts[a] -= 1
        counts[b] += 1
        error -= int(values[a] - values[b])
    return counts


def build_ptable(*, max_noise: int = 3, variance: float = 0.5, smallest: int = 3) -> PTable:
    """The ptable for these parameters (module docstring); deterministic."""
    if max_noise < 1 or smallest < 1:
        raise ValueError("max_noise and smallest are at least 1")
    if max_noise < smallest - 1:
        raise ValueError("max_noise must reach 0 from every unpublishable value (max_noise ≥ smallest − 1)")
    sigma = _sigma_for(variance, max_noise)
    interior = smallest + max_noise
    rows = [PTableRow(i=0, values=(0,), keys=(KEY_RANGE,))]
    for i in range(1, interior + 1):
        allowed = np.array([j for j in range(max(0, i - max_noise), i + max_noise + 1) if j == 0 or j >= smallest],
                           dtype=np.int64)
        counts = _quantised(allowed.astype(np.float64), _tilted(allowed.astype(np.float64), i, sigma), i) \
            if i < interior else _symmetric(allowed, i, sigma)
        keep = counts > 0
        rows.append(PTableRow(i=i, values=tuple(int(v) for v in allowed[keep]),
                              keys=tuple(int(c) for c in counts[keep])))
    return PTable(max_noise=max_noise, variance=variance, smallest=smallest, rows=tuple(rows))


def _symmetric(allowed: np.ndarray, i: int, sigma: float) -> np.ndarray:
    """The interior row: symmetric counts (so the mean is exactly i), rounded outwards from the centre."""
    d = allowed - i
    target = np.exp(-(d ** 2) / (2 * sigma ** 2))
    target = target / target.sum() * KEY_RANGE
    counts = np.zeros(len(d), dtype=np.int64)
    for step in range(1, int(abs(d).max()) + 1):
        each = round(float(target[d == step][0]))
        counts[d == step] = each
        counts[d == -step] = each
    counts[d == 0] = KEY_RANGE - int(counts.sum())
    return counts


DEFAULT_PTABLE = build_ptable()
