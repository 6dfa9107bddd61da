"""The manifest: the one-row record that says what an index is and which write is committed.

It records the embedder (model, revision, layer, pooling, H, d_head, instructions), the chunking
settings, the running head-scale sums and the committed `chunks` version they belong to, the
external spaces, the ANN indexes built, the default strategy `mrag tune` chose, the maintenance
counters, and a random id made with the index. `Manifest` is the typed form; `to_json`/`from_json`
are the only code that knows the stored format (keys it does not know are kept as they are). The
store owns it (`mrag.store`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mrag.scales import ScaleSums

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)


@dataclass(frozen=True)
class Manifest:
    embedder: dict[str, Any]  # the HeadEmbedder's info(): model, revision, layer, pooling, dim, n_heads, ...
    settings: dict[str, Any]  # chunk_chars, overlap
    chunks_version: int  # the chunks table version of the last complete write: what readers see
    sums: ScaleSums  # the committed rows' head-scale sums ("stats" in the stored form)
    format: int = FORMAT_VERSION  # 1: all heads in one packed `heads` column (read-only)
    spaces: list[dict[str, Any]] = field(default_factory=list)  # external spaces {name, function, options, dim, weight}
    ann: dict[str, Any] | None = None  # the ANN indexes built: index_type, rows, nprobes
    default_strategy: dict[str, Any] | None = None  # {"strategy": name, ...why it won}, from `mrag tune`
    maintenance: dict[str, int] = field(default_factory=lambda: {"writes": 0, "rows": 0})  # since compaction
    # a random token made with the index: a folder deleted and made again under an open index is another
    # index, whose rows an open one must read anew (None: an index made before the token)
    index_id: str | None = None
    other: dict[str, Any] = field(default_factory=dict)  # stored keys this version does not know

    @property
    def packed(self) -> bool:
        return self.format == 1

    @property
    def n_heads(self) -> int:
        return int(self.embedder["n_heads"])

    @property
    def head_dim(self) -> int:
        return int(self.embedder["head_dim"])

    @property
    def dim(self) -> int:
        return int(self.embedder["dim"])

    def space_dims(self) -> dict[str, int]:
        """External space -> dimension."""
        return {s["name"]: int(s["dim"]) for s in self.spaces}

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        out = self.other | {
            "format": self.format,
            "embedder": self.embedder,
            "settings": self.settings,
            "chunks_version": self.chunks_version,
            "stats": self.sums.to_json(),
        }
        optional = {"spaces": self.spaces, "ann": self.ann, "default_strategy": self.default_strategy,
                    "maintenance": self.maintenance, "index_id": self.index_id}
        return out | {key: value for key, value in optional.items() if value}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        known = {f.name for f in dataclasses.fields(cls)} - {"sums", "other"} | {"stats"}
        sums = ScaleSums.from_json(data["stats"])
        for space in data.get("spaces") or []:  # a space recorded without its sums starts at zero
            if f"space:{space['name']}" not in sums.groups:
                sums.add_space(space["name"], int(space["dim"]))
        return cls(
            embedder=data["embedder"],
            settings=data["settings"],
            chunks_version=int(data["chunks_version"]),
            sums=sums,
            format=data.get("format", FORMAT_VERSION),
            spaces=list(data.get("spaces") or []),
            ann=data.get("ann"),
            default_strategy=data.get("default_strategy"),
            maintenance=data.get("maintenance") or {"writes": 0, "rows": 0},
            index_id=data.get("index_id"),
            other={key: value for key, value in data.items() if key not in known},
        )
