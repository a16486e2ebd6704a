"""One fuzz target in a libFuzzer process: ``python -m fuzz.worker TARGET WORKDIR [flags]``.

The runner (``python -m fuzz``) starts one worker per target: libFuzzer ends its process when
it is done or on the first crash or hang, which it saves under ``-artifact_prefix``. The seed
inputs are written to ``WORKDIR/corpus/TARGET`` (where the corpus grows between runs), the
target's own state (index, spool) lives in a fresh ``WORKDIR/state/TARGET``.
"""

import hashlib
import importlib
import shutil
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import atheris

from fuzz.registry import TARGETS, TargetSpec


def write_seeds(folder: Path, inputs: Iterable[bytes]) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for data in inputs:
        (folder / f"seed-{hashlib.sha1(data).hexdigest()}").write_bytes(data)  # noqa: S324
        count += 1
    return count


def write_dictionary(path: Path, tokens: Iterable[bytes]) -> None:
    """A libFuzzer dictionary: one quoted token a line, non-printable bytes as \\xNN."""
    lines = []
    for token in tokens:
        text = "".join(
            chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02X}" for b in token
        )
        lines.append(f'"{text}"')
    path.write_text("\n".join(lines) + "\n")


def load(spec: TargetSpec, state: Path) -> tuple[Callable[[bytes], None], Iterable[bytes]]:
    """The target's one-input function and seeds, its code imported under instrumentation."""
    with atheris.instrument_imports(include=list(spec.instrument)):
        module = importlib.import_module(spec.module)
    build = getattr(module, f"build_{spec.entry}")
    seeds = getattr(module, f"seeds_{spec.seeds}")
    return build(state), seeds()


def main(argv: list[str]) -> None:
    name, workdir, flags = argv[1], Path(argv[2]), argv[3:]
    warnings.simplefilter("ignore")  # pydicom warns about every odd value it meets
    spec = TARGETS[name]
    state = workdir / "state" / name
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    one_input, seeds = load(spec, state)
    corpus = workdir / "corpus" / name
    write_seeds(corpus, seeds)
    extra = [f"-max_len={spec.max_len}"]
    if spec.tokens:
        dictionary = state / "tokens.dict"
        write_dictionary(dictionary, spec.tokens)
        extra.append(f"-dict={dictionary}")
    atheris.Setup([argv[0], *extra, *flags, str(corpus)], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
