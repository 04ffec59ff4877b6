"""The validated configuration as typed, frozen objects, built once at a stage's boundary.

Every section of ``config/config.schema.yaml`` has a frozen dataclass here whose fields are exactly the
schema's keys (a test keeps the two equal), so a stage reads ``config.train.lr`` (a float the schema
already checked) instead of re-reading and re-casting ``cfg["train"]["lr"]``.

A stage declares what it reads once, as a :class:`StageConfig` subclass named ``Config`` in its module::

    @dataclass(frozen=True)
    class Config(StageConfig):
        train: TrainSettings
        labels: tuple[str, ...]
        seed: int

Its field names are the config sections the stage reads: ``Config.from_config(cfg)`` takes exactly
those from the validated dict, and ``rules/common.smk`` hashes exactly those sections into the rule's
rerun params (read from the module's source by :func:`cohortseg.codehash.config_sections`, so planning
imports no stage module).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="Settings")


class Settings:
    """Base of the section dataclasses: strict construction from a validated dict, and back."""

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown, missing = sorted(set(data) - names), sorted(names - set(data))
        if unknown or missing:
            raise ValueError(f"{cls.__name__}: unknown keys {unknown}, missing keys {missing} (validate the config first)")
        hints = typing.get_type_hints(cls)
        return cls(**{name: _convert(hints[name], data[name]) for name in names})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (lists for tuples), as the schema has them."""
        return _plain(dataclasses.asdict(self))  # type: ignore[call-overload]


def _convert(tp: Any, value: Any) -> Any:
    """``value`` (from the validated dict) as the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if isinstance(value, str) and str in inner:  # "auto", or a choice of names
            return value
        structured = [a for a in inner if a is not str]
        if len(structured) == 1:
            return _convert(structured[0], value)
        return value  # a choice of plain types (str | float): the value as validated
    if isinstance(tp, type) and issubclass(tp, Settings):
        return tp.from_dict(value)
    if origin is tuple:
        args = typing.get_args(tp)
        item = args[0] if args else Any
        return tuple(_convert(item, v) for v in value)
    if origin in (dict, Mapping) or tp is dict:
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class NiftiSettings(Settings):
    images: str | None
    labels: str | None
    table: str | None
    tolerance: float


@dataclass(frozen=True)
class MaskSettings(Settings):
    dir: str | None
    pattern: str
    segment_codes: dict  # type: ignore[type-arg]  # label -> [[code value, scheme], ...]
    in_cohort: bool


@dataclass(frozen=True)
class PseudonymSettings(Settings):
    prefix: str
    length: int


@dataclass(frozen=True)
class PrivacySettings(Settings):
    descriptors: str


@dataclass(frozen=True)
class IndexSettings(Settings):
    postop_regex: str
    slice_gap_tolerance: float
    threads: int


@dataclass(frozen=True)
class SelectSettings(Settings):
    rules: tuple[dict, ...]  # type: ignore[type-arg]
    override: dict  # type: ignore[type-arg]
    gantry_tilt: str
    tilt_tolerance_deg: float
    uneven_spacing: str
    tie_break: tuple[str, ...]
    hook: str | None


@dataclass(frozen=True)
class ConvertSettings(Settings):
    tool: str


@dataclass(frozen=True)
class CtSettings(Settings):
    clip: tuple[float, ...] | str
    mean: float | str
    sd: float | str


AUTO = "auto"


@dataclass(frozen=True)
class PreprocessSettings(Settings):
    """``auto`` values are the plan's (cohortseg.plans); a stage that preprocesses gets them resolved."""

    orientation: str
    spacing: tuple[float, ...] | str
    size: tuple[int, ...] | str
    normalisation: str
    percentiles: tuple[float, ...]
    ct: CtSettings

    @property
    def resolved(self) -> bool:
        return AUTO not in (self.spacing, self.size, self.normalisation) and (
            self.normalisation != "ct" or AUTO not in (self.ct.clip, self.ct.mean, self.ct.sd))


@dataclass(frozen=True)
class PrepareSettings(Settings):
    subjects_per_job: int


@dataclass(frozen=True)
class SplitSettings(Settings):
    folds: int
    test_fraction: float
    file: str | None


@dataclass(frozen=True)
class AugmentSettings(Settings):
    rotation: float
    scaling: float
    elastic: bool
    gamma: float
    noise: float
    flip: bool
    contrast: float


@dataclass(frozen=True)
class PatchSettings(Settings):
    size: tuple[int, ...] | str | None
    foreground_fraction: float
    samples_per_volume: int


@dataclass(frozen=True)
class TrainSettings(Settings):
    model: str
    base_filters: int
    levels: int
    res_units: int
    unetr_feature_size: int
    unetr_hidden_size: int
    unetr_heads: int
    epochs: int
    batch_size: int | str
    lr: float
    weight_decay: float
    lr_schedule: str
    loss_alpha: float
    patience: int
    max_minutes: float | None
    min_epochs: int
    augment_probability: float
    augment: AugmentSettings
    device: str
    patch: PatchSettings
    compute_threads: int
    workers: int
    prefetch: int
    precision: str
    channels_last: bool
    compile: bool

    @property
    def patch_mode(self) -> bool:
        if self.patch.size == AUTO:
            raise ValueError("train.patch.size is auto: resolve it from the plan first (cohortseg.plans)")
        return self.patch.size is not None

    @property
    def loader_workers(self) -> int:
        """Loader worker processes beside the training threads (patch mode only)."""
        return self.workers if self.patch_mode else 0


@dataclass(frozen=True)
class PlansSettings(Settings):
    target: str
    memory_gb: float
    cpu_memory_estimate: bool
    cpu_voxels: int
    modality: str
    anisotropy: float


def planned_train(train: TrainSettings, model_plan: Mapping[str, Any]) -> TrainSettings:
    """A model's training settings with its plan's window and batch (cohortseg.plans; explicit values were
    already the plan's)."""
    patch = model_plan["patch"]
    return dataclasses.replace(train, batch_size=int(model_plan["batch_size"]),
                               patch=dataclasses.replace(train.patch, size=tuple(patch) if patch else None))


def planned_preprocess(dataset_plan: Mapping[str, Any]) -> PreprocessSettings:
    """The preprocessing settings the dataset plan resolved."""
    return PreprocessSettings.from_dict(dataset_plan["preprocess"])


@dataclass(frozen=True)
class InferSettings(Settings):
    overlap: float
    mode: str
    threshold: float
    tta_flip: bool
    device: str
    cohorts: dict  # type: ignore[type-arg]


@dataclass(frozen=True)
class MetricsSettings(Settings):
    hd95: str
    empty_distance: str | float


@dataclass(frozen=True)
class ExportSettings(Settings):
    enabled: bool
    tolerance: float


@dataclass(frozen=True)
class DicomSegSettings(Settings):
    enabled: bool
    segments: dict  # type: ignore[type-arg]


@dataclass(frozen=True)
class PacsQuerySettings(Settings):
    study_date: str
    modalities: tuple[str, ...]
    study_description: str
    series_description: str
    min_instances: int
    patients_file: str


@dataclass(frozen=True)
class DimseSettings(Settings):
    host: str
    port: int
    called_aet: str
    calling_aet: str
    store_port: int


@dataclass(frozen=True)
class PacsSettings(Settings):
    protocol: str
    url: str
    credentials_env: str
    credentials_file: str
    push: bool
    timeout_s: float
    retries: int
    retrieve_minutes: float
    query: PacsQuerySettings
    dimse: DimseSettings


@dataclass(frozen=True)
class PackageSettings(Settings):
    enabled: bool
    version: str
    intended_use: str
    limits: str


@dataclass(frozen=True)
class WatchSettings(Settings):
    poll_s: float
    stable_s: float


@dataclass(frozen=True)
class ReportSettings(Settings):
    overlays: int


@dataclass(frozen=True)
class ReproSettings(Settings):
    mode: str
    vary_seed: bool
    runs: int
    stages: tuple[str, ...]
    threads: tuple[int, ...]
    alert_ratio: float
    dir: str


@dataclass(frozen=True)
class ResourcesSettings(Settings):
    light_threads: int
    train_threads: int
    infer_threads: int
    light_mem_mb: int
    train_mem_mb: int
    infer_mem_mb: int
    train_runtime_min: int
    gpus_train: int


# top-level key -> its type (sections and plain values); a test checks this against the schema
SECTIONS: dict[str, Any] = {
    "study": str, "dicom_dir": str, "source": str, "nifti": NiftiSettings, "masks": MaskSettings, "private_dir": str,
    "seed": int, "deterministic": bool, "pseudonym": PseudonymSettings, "privacy": PrivacySettings,
    "index": IndexSettings,
    "select": SelectSettings, "convert": ConvertSettings, "labels": tuple[str, ...], "preprocess": PreprocessSettings,
    "prepare": PrepareSettings, "split": SplitSettings, "train": TrainSettings, "models": dict, "plans": PlansSettings,
    "infer": InferSettings,
    "metrics": MetricsSettings, "export": ExportSettings,
    "dicomseg": DicomSegSettings, "pacs": PacsSettings, "package": PackageSettings, "watch": WatchSettings,
    "report": ReportSettings, "repro": ReproSettings, "resources": ResourcesSettings,
}

S = TypeVar("S", bound="StageConfig")


class StageConfig:
    """Base of each stage's ``Config``: its field names are the config sections the stage reads."""

    SECTIONS: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        unknown = [n for n in getattr(cls, "__annotations__", {}) if n not in SECTIONS and n != "SECTIONS"]
        if unknown:
            raise TypeError(f"{cls.__module__}.{cls.__name__}: {unknown} are not config sections")

    @classmethod
    def from_config(cls: type[S], cfg: Mapping[str, Any]) -> S:
        """The stage's typed view of a validated config (reads only its own sections)."""
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        return cls(**{n: _convert(hints[n], cfg[n]) for n in names})

    @classmethod
    def sections(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))  # type: ignore[call-overload]


@dataclass(frozen=True)
class StudyConfig(StageConfig):
    """The whole configuration, typed: for the stages that record or replay all of it (provenance, the
    reproducibility audit). ``to_dict()`` gives back the validated dict."""

    study: str
    dicom_dir: str
    source: str
    nifti: NiftiSettings
    masks: MaskSettings
    private_dir: str
    seed: int
    deterministic: bool
    pseudonym: PseudonymSettings
    privacy: PrivacySettings
    index: IndexSettings
    select: SelectSettings
    convert: ConvertSettings
    labels: tuple[str, ...]
    preprocess: PreprocessSettings
    prepare: PrepareSettings
    split: SplitSettings
    train: TrainSettings
    models: dict  # type: ignore[type-arg]
    plans: PlansSettings
    infer: InferSettings
    metrics: MetricsSettings
    export: ExportSettings
    dicomseg: DicomSegSettings
    pacs: PacsSettings
    package: PackageSettings
    watch: WatchSettings
    report: ReportSettings
    repro: ReproSettings
    resources: ResourcesSettings
