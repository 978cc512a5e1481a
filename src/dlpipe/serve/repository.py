"""Find the bundles to serve and load them: a run directory, a bundle, or a folder of either.

`discover` is cheap (manifests and signatures, every file checked against its sha256) and runs
before the server binds its port, so a bad path fails at once with a clear message.
`load_model` is the slow part (ONNX Runtime session, fitted preprocessing, drift reference)
and runs after the server is up, while readiness is still false. Nothing is ever loaded,
replaced or deleted at run time through an endpoint.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlpipe.errors import ExportError, RunDirError
from dlpipe.export.bundle import MANIFEST, SIGNATURE, VARIANTS, verify_bundle

__all__ = ["BundleSource", "LoadedModel", "discover", "load_model"]

log = logging.getLogger("dlpipe.serve")
_PROFILE = "data_profile.json"
_RUN_MARKER = "config.yaml"  # what makes a folder a run directory (runs.CONFIG)
_EXPORT = "export"  # the bundle's folder in a run directory (runs.EXPORT)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class BundleSource:
    """A bundle found on disk: where it is, its name and version, its signature."""

    name: str
    version: str
    path: Path
    run: Path | None
    """The run directory holding the bundle, when served from one."""
    manifest: dict[str, Any]
    signature: dict[str, Any]

    @property
    def key(self) -> tuple[str, str]:
        return self.name, self.version

    @property
    def created(self) -> str:
        return str(self.manifest.get("created", ""))

    def variants(self) -> list[str]:
        return [v for v, f in VARIANTS.items() if f in self.manifest["files"]]


@dataclass
class LoadedModel:
    """A bundle loaded for inference."""

    source: BundleSource
    predictor: Any
    """The `OnnxPredictor`: ONNX Runtime session, fitted preprocessing, signature."""
    variant: str
    load_seconds: float
    reference: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)


def discover(path: str | Path, *, name: str | None = None) -> list[BundleSource]:
    """The bundles under `path`, newest version of each name first.

    Args:
        path: a bundle folder, a run directory (its ``export/`` bundle), or a folder whose
            sub-folders are either.
        name: the served name of a single bundle (default: its manifest's name, the run's).

    Raises:
        RunDirError: nothing servable at `path`.
        ExportError: a bundle whose files do not match its manifest, two bundles with the
            same name and version, a bad name, or `name` given for several bundles.
    """
    root = Path(path)
    if not root.exists():
        raise RunDirError(f"serve: {root} does not exist")
    found = _bundle_at(root)
    if found is not None:
        sources = [_source(*found)]
    else:
        candidates = [f for f in sorted(root.iterdir())
                      if f.is_dir() and not f.name.startswith(".")]
        sources = [_source(*hit) for hit in map(_bundle_at, candidates) if hit is not None]
        if not sources:
            raise RunDirError(f"serve: {root} is not a bundle (no {MANIFEST}), a run directory "
                              f"with {_EXPORT}/, or a folder of them; make a bundle with "
                              f"`dlpipe export RUN_DIR`")
    if name is not None:
        if len({s.name for s in sources}) > 1:
            raise ExportError(f"serve: --name applies to one model; {root} holds "
                              f"{', '.join(sorted({s.name for s in sources}))}")
        for source in sources:
            source.name = name
    seen: dict[tuple[str, str], Path] = {}
    for source in sources:
        if not _NAME.match(source.name):
            raise ExportError(f"serve: model name {source.name!r} of {source.path} must be "
                              f"letters, digits, '.', '_' or '-'; pass --name")
        if source.key in seen:
            raise ExportError(f"serve: {seen[source.key]} and {source.path} are both "
                              f"{source.name} version {source.version}; serve one of them")
        seen[source.key] = source.path
    return sorted(sources, key=lambda s: (s.name, s.created), reverse=True)


def load_model(source: BundleSource, *, precision: str = "fp32", threads: int = 1
               ) -> LoadedModel:
    """Load a bundle for inference: `load_bundle` (checks every file again), the variant
    asked for (fp32 when the bundle lacks it, noted), and the drift reference."""
    from dlpipe.export import load_bundle

    start = time.perf_counter()
    notes = []
    variant = precision
    if precision not in source.variants():
        notes.append(f"{source.name} {source.version}: no {VARIANTS[precision]} in "
                     f"{source.path}; serving fp32")
        log.warning("%s", notes[-1])
        variant = "fp32"
    predictor = load_bundle(source.path, variant=variant, threads=threads)  # type: ignore[arg-type]
    reference = _reference(source)
    if reference is None:
        notes.append(f"{source.name} {source.version}: no drift reference (bundle exported by "
                     f"an older dlpipe, and no run directory); drift is not measured")
        log.warning("%s", notes[-1])
    return LoadedModel(source, predictor, variant, time.perf_counter() - start, reference, notes)


def _bundle_at(folder: Path) -> tuple[Path, Path | None] | None:
    if (folder / MANIFEST).is_file():
        return folder, None
    if (folder / _RUN_MARKER).is_file() and (folder / _EXPORT / MANIFEST).is_file():
        return folder / _EXPORT, folder
    return None


def _source(bundle: Path, run: Path | None) -> BundleSource:
    manifest = verify_bundle(bundle)
    try:
        signature = json.loads((bundle / SIGNATURE).read_text())
    except (OSError, ValueError):
        raise ExportError(f"bundle: {bundle / SIGNATURE} is missing or not JSON; re-export "
                          f"the run") from None
    return BundleSource(name=str(manifest.get("name") or bundle.name),
                        version=str(manifest.get("version") or "1"), path=bundle, run=run,
                        manifest=manifest, signature=signature)


def _reference(source: BundleSource) -> dict[str, Any] | None:
    """The bundle's drift reference; for an older bundle in a run, computed from the run's
    training split."""
    profile_path = source.path / _PROFILE
    if profile_path.is_file():
        reference = json.loads(profile_path.read_text()).get("reference")
        if reference:
            return reference
    if source.run is None:
        return None
    from dlpipe.export.reference import reference_profile
    from dlpipe.runs import RunDir

    rundir = RunDir(source.run)  # not RunDir.open: serving never touches the run directory
    try:
        from dlpipe.export import REFERENCE_ROWS

        train = rundir.read_split_bounded("train", REFERENCE_ROWS)
    except (OSError, RunDirError):
        return None
    signature = source.signature
    return reference_profile(signature["columns"], train, target=signature.get("target"),
                             task=signature.get("task"))
