"""SDK method of edge export: load a verified version here, export it, register the result.

The conversion runs in this process, which may run the model's code; the server only signs
the uploaded ONNX model and its report (see underlay.ml.export.registration).
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from underlay.errors import InvalidInput
from underlay.ml.export.schemas import ExportRead

if TYPE_CHECKING:
    import httpx

    from underlay.ml.flavors import LoadedModel
    from underlay.ml.flavors.signature import Signature
    from underlay.schemas import BlobRead

#: rows drawn from the signature's column ranges when no held-out table is given
SYNTHETIC_ROWS = 256


def parse_table_ref(ref: str, flag: str) -> tuple[str, int | None]:
    """``TABLE`` or ``TABLE@3``."""
    found = re.fullmatch(r"([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})(?:@([0-9]{1,9}))?", ref)
    if found is None:
        raise InvalidInput(f"{flag} {ref[:80]!r} is not a table reference: write TABLE or TABLE@3")
    return found.group(1), int(found.group(2)) if found.group(2) else None


class ExportMethods:
    """Mixed into :class:`underlay.client.Client`."""

    if TYPE_CHECKING:
        _http: httpx.Client

        def _one(self, model: type[Any], method: str, path: str, **kwargs: Any) -> Any: ...
        def load_model(self, project: str, ref: str) -> LoadedModel: ...
        def read_table(
            self,
            project: str,
            name: str,
            *,
            version: int | None = None,
            columns: list[str] | None = None,
            limit: int | None = None,
        ) -> Any: ...
        def upload_blob(
            self,
            project: str,
            data: Any,
            *,
            name: str = ...,
            media_type: str = ...,
            digest: str | None = ...,
        ) -> BlobRead: ...

    def export_model(
        self,
        project: str,
        ref: str,
        *,
        quantize: str = "none",
        held_out: str | None = None,
        label: str | None = None,
        tolerance: float = 1.0,
        target: str | None = None,
        calibration: str | None = None,
        runs: int = 100,
    ) -> ExportRead:
        """Export version ``ref`` (``NAME@ALIAS``) to ONNX and register it as the next version
        of ``target`` (``NAME-onnx`` by default); raises ``ExportRefused`` (nothing registered)
        when the metric on ``held_out`` (``TABLE[@V]`` with its ``label`` column) moves
        beyond ``tolerance``. See docs/export.md."""
        from underlay.ml.export import (
            ExportOptions,
            export_model,
            feature_matrix,
            held_out_from_arrow,
        )

        if (held_out is None) != (label is None):
            raise InvalidInput("give the held-out table and its label column together")
        options = ExportOptions(quantize=quantize, tolerance=tolerance, runs=runs)  # type: ignore[arg-type]
        options.check()
        loaded = self.load_model(project, ref)
        if loaded.flavor == "onnx":
            raise InvalidInput(f"{ref} is an ONNX model already: nothing to export")
        held = None
        if held_out is not None and label is not None:
            name, version = parse_table_ref(held_out, "--held-out")
            held = held_out_from_arrow(self.read_table(project, name, version=version), label)
            example = held.features[:8]
        else:
            example = synthetic_rows(loaded.signature)
        rows = None
        if calibration is not None:
            name, version = parse_table_ref(calibration, "--calibration")
            table = self.read_table(project, name, version=version)
            columns = held.feature_names if held is not None else None
            rows = feature_matrix(table, columns or [c for c in table.column_names if c != label])
        result = export_model(
            loaded.model, example, held_out=held, calibration=rows, options=options
        )
        files = self._upload_export(project, result.onnx, result.artifacts(), example)
        body: dict[str, Any] = {"files": files}
        if target is not None:
            body["target"] = target
        model, _, version_ref = ref.partition("@")
        url = f"/projects/{project}/models/{model}/versions/{version_ref or 'latest'}/exports"
        read: ExportRead = self._one(ExportRead, "POST", url, json=body)
        return read

    def _upload_export(
        self, project: str, onnx: bytes, artifacts: dict[str, bytes], example: np.ndarray
    ) -> list[dict[str, Any]]:
        from underlay.ml import flavors
        from underlay.ml.export import MODEL_FILE

        files = []
        with tempfile.TemporaryDirectory(prefix="underlay-export-") as tmp:
            folder = Path(tmp)
            flavors.save_model(onnx, folder, flavor="onnx", input_example=example[:5])
            for name, data in artifacts.items():
                if name != MODEL_FILE:  # the flavor wrote the model file itself
                    (folder / name).write_bytes(data)
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                data = path.read_bytes()
                digest = hashlib.sha256(data).hexdigest()
                self.upload_blob(project, data, name=path.name, digest=digest)
                relative = path.relative_to(folder).as_posix()
                files.append({"path": relative, "digest": digest, "size": len(data)})
        return files


def synthetic_rows(signature: Signature | None) -> np.ndarray:
    """Seeded rows inside the signature's column ranges (standard normal where it records
    none): the evaluation rows of an export without a held-out table."""
    spec = signature.inputs[0] if signature is not None and len(signature.inputs) == 1 else None
    if spec is None or len(spec.shape) != 2 or spec.shape[1] < 1:
        raise InvalidInput(
            "the version's signature does not describe one 2-D input: give a held-out table "
            "(--held-out TABLE --label COLUMN)"
        )
    width = spec.shape[1]
    random = np.random.default_rng(0)
    rows = random.standard_normal((SYNTHETIC_ROWS, width))
    lows, highs = spec.column_min or [], spec.column_max or []
    for i, (low, high) in enumerate(zip(lows, highs, strict=False)):
        if low is not None and high is not None and i < width:
            rows[:, i] = random.uniform(low, high, SYNTHETIC_ROWS)
    return rows
