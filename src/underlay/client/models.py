"""SDK methods of the model registry, and the verified loader behind ``underlay.load_model``.

A load asks the server to verify the version (signature and every file's bytes, audited),
then downloads each file and checks it again here against the signed manifest, with the
signature checked against the platform key the server names (or the one pinned in
``UNDERLAY_SIGNING_KEY_ID``). A file that does not match is reported to the server, which
audits the refusal, and the load fails naming the file. Only then is the folder handed to its
flavor as ``verified`` (which allows formats that run code: pickle, TorchScript, classes).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from underlay.data.manifest import check_path
from underlay.errors import IntegrityFailure, InvalidInput, UnderlayError
from underlay.ml.registry.schemas import (
    AliasEventRead,
    AliasHistoryRead,
    CardRead,
    ModelRead,
    ModelVersionRead,
    VerifiedManifestRead,
)

if TYPE_CHECKING:
    import httpx

    from underlay.ml.flavors import LoadedModel, ModelInfo

PINNED_KEY_ENV = "UNDERLAY_SIGNING_KEY_ID"


def parse_model_ref(ref: str) -> tuple[str, str]:
    """``NAME``, ``NAME@3``, ``NAME@ALIAS`` or ``NAME@latest`` as (name, version ref)."""
    import re

    name, _, version = ref.partition("@")
    ok = re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", name) and (
        not version or re.fullmatch(r"[1-9][0-9]{0,8}|[a-z][a-z0-9_-]{0,62}", version)
    )
    if not ok:
        raise InvalidInput(
            f"{ref[:80]!r} is not a model reference: write NAME, NAME@3, NAME@ALIAS or NAME@latest"
        )
    return name, version or "latest"


class ModelMethods:
    """Mixed into :class:`underlay.client.Client`."""

    if TYPE_CHECKING:
        _http: httpx.Client

        def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response: ...
        def _one(self, model: type[Any], method: str, path: str, **kwargs: Any) -> Any: ...
        def _many(self, model: type[Any], path: str, **kwargs: Any) -> list[Any]: ...
        def download_blob(self, project: str, digest: str) -> bytes: ...

    def create_model(self, project: str, name: str, **fields: str) -> ModelRead:
        body = {"name": name, **fields}
        result: ModelRead = self._one(ModelRead, "POST", f"/projects/{project}/models", json=body)
        return result

    def list_models(self, project: str) -> list[ModelRead]:
        return self._many(ModelRead, f"/projects/{project}/models")

    def read_model(self, project: str, name: str) -> ModelRead:
        result: ModelRead = self._one(ModelRead, "GET", f"/projects/{project}/models/{name}")
        return result

    def update_model(self, project: str, name: str, **fields: str | None) -> ModelRead:
        body = {k: v for k, v in fields.items() if v is not None}
        path = f"/projects/{project}/models/{name}"
        result: ModelRead = self._one(ModelRead, "PATCH", path, json=body)
        return result

    def delete_model(self, project: str, name: str) -> None:
        self._request("DELETE", f"/projects/{project}/models/{name}")

    def register_model(
        self, project: str, name: str, *, run: int, path: str, description: str = ""
    ) -> ModelVersionRead:
        """Sign run ``run``'s artifacts under ``path`` as the next version of ``name``."""
        body = {"run": run, "path": path, "description": description}
        url = f"/projects/{project}/models/{name}/versions"
        result: ModelVersionRead = self._one(ModelVersionRead, "POST", url, json=body)
        return result

    def list_model_versions(self, project: str, name: str) -> list[ModelVersionRead]:
        return self._many(ModelVersionRead, f"/projects/{project}/models/{name}/versions")

    def read_model_version(self, project: str, ref: str) -> ModelVersionRead:
        name, version = parse_model_ref(ref)
        url = f"/projects/{project}/models/{name}/versions/{version}"
        result: ModelVersionRead = self._one(ModelVersionRead, "GET", url)
        return result

    def set_alias(
        self, project: str, name: str, alias: str, version: int, *, reason: str
    ) -> AliasEventRead:
        url = f"/projects/{project}/models/{name}/aliases/{alias}"
        body = {"version": version, "reason": reason}
        result: AliasEventRead = self._one(AliasEventRead, "PUT", url, json=body)
        return result

    def remove_alias(self, project: str, name: str, alias: str, *, reason: str) -> AliasEventRead:
        url = f"/projects/{project}/models/{name}/aliases/{alias}"
        result: AliasEventRead = self._one(AliasEventRead, "DELETE", url, params={"reason": reason})
        return result

    def alias_history(
        self, project: str, name: str, *, alias: str | None = None, at: dt.datetime | None = None
    ) -> AliasHistoryRead:
        params: dict[str, str] = {}
        if alias is not None:
            params["alias"] = alias
        if at is not None:
            params["at"] = at.isoformat()
        url = f"/projects/{project}/models/{name}/history"
        result: AliasHistoryRead = self._one(AliasHistoryRead, "GET", url, params=params)
        return result

    def model_card(self, project: str, ref: str, *, html: bool = False) -> CardRead:
        name, version = parse_model_ref(ref)
        url = f"/projects/{project}/models/{name}/versions/{version}/card"
        params = {"format": "html" if html else "markdown"}
        result: CardRead = self._one(CardRead, "GET", url, params=params)
        return result

    def verify_model(self, project: str, ref: str) -> VerifiedManifestRead:
        """Ask the server to verify a version (audited as ``model.load``)."""
        name, version = parse_model_ref(ref)
        url = f"/projects/{project}/models/{name}/versions/{version}/verify"
        result: VerifiedManifestRead = self._one(VerifiedManifestRead, "POST", url)
        return result

    def load_model(self, project: str, ref: str) -> LoadedModel:
        """Download, verify and load a registered version: ``NAME@ALIAS``, ``NAME@3``."""
        from underlay.ml import flavors

        checked = self.verify_model(project, ref)
        with tempfile.TemporaryDirectory(prefix="underlay-model-") as tmp:
            folder = Path(tmp)
            self._fetch_verified(project, checked, folder)
            return flavors.load_model(folder, verified=True)

    def _fetch_verified(self, project: str, checked: VerifiedManifestRead, folder: Path) -> None:
        from underlay.ml.registry.manifest import (
            ArtifactRefused,
            Manifest,
            check_binding,
            check_file,
            check_signature,
        )

        what = f"model {checked.model!r} version {checked.version}"
        data = checked.manifest.encode("utf-8")
        trusted = os.environ.get(PINNED_KEY_ENV) or checked.key_id
        try:
            check_signature(
                data,
                base64.b64decode(checked.signature),
                checked.key_id,
                base64.b64decode(checked.public_key),
                trusted,
                what,
            )
            manifest = Manifest.from_bytes(data, what)
            check_binding(manifest, manifest.project_id, checked.model, checked.version, what)
            for entry in manifest.files:
                target = folder / check_path(entry.path)
                try:
                    content = self.download_blob(project, entry.sha256)
                except IntegrityFailure as error:
                    raise ArtifactRefused(
                        f"file {entry.path!r} of {what} failed verification on download "
                        f"({error}): load refused",
                        entry.path,
                    ) from None
                check_file(entry, hashlib.sha256(content).hexdigest(), len(content), what)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
        except ArtifactRefused as refused:
            self._report_refusal(project, checked, refused.file, refused.message)
            raise

    def _report_refusal(
        self, project: str, checked: VerifiedManifestRead, file: str, reason: str
    ) -> None:
        url = f"/projects/{project}/models/{checked.model}/versions/{checked.version}/refusals"
        # the refusal stands whether or not the server could record it
        with contextlib.suppress(UnderlayError):
            self._request("POST", url, json={"file": file[:1024], "reason": reason[:1000]})


def load_model(project: str, ref: str, **client_options: Any) -> LoadedModel:
    """``underlay.load_model("P", "NAME@ALIAS")``: a verified model with ``predict``, with a
    client configured from the environment (``UNDERLAY_URL``, ``UNDERLAY_TOKEN``, profile)."""
    from underlay.client import Client

    with Client.from_env(**client_options) as client:
        return client.load_model(project, ref)


def log_model(
    client: Any,
    project: str,
    run_id: int,
    model: Any,
    artifact_path: str = "model",
    *,
    input_example: Any = None,
    flavor: str | None = None,
    **options: Any,
) -> ModelInfo:
    """Save ``model`` with its flavor (inferred unless named) into a temporary folder and log
    its files and ``underlay-model.json`` as artifacts of the run under ``artifact_path``."""
    from underlay.ml import flavors

    root = check_path(artifact_path.strip("/"))
    with tempfile.TemporaryDirectory(prefix="underlay-log-model-") as tmp:
        folder = Path(tmp)
        info = flavors.save_model(
            model, folder, flavor=flavor, input_example=input_example, **options
        )
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            client.log_artifact(
                project, run_id, path, f"{root}/{path.relative_to(folder).as_posix()}"
            )
    return info
