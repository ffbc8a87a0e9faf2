"""Build the compiled per-frame modules (see ``voice.native``): ``python -m voice.nativebuild``.

Needs mypyc (it comes with mypy), setuptools and a C compiler. ``--state`` prints whether this interpreter
would load the build.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from voice.native import GROUP, MANIFEST, MODULES, NATIVE_DIR, ROOT, digest, source, state

__all__ = ["build", "main"]


def build(out: Path = NATIVE_DIR) -> None:
    """Compile ``MODULES`` into ``out`` with mypyc, then write the manifest. Runs setuptools in a scratch
    directory, so it neither reads the project's packaging nor leaves files in the tree."""
    from mypyc.build import mypycify
    from setuptools import setup

    sources = [str(source(m)) for m in MODULES]
    digests = {m: digest(source(m)) for m in MODULES}
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="voice-native-") as tmp:
        scratch = Path(tmp)
        os.chdir(scratch)
        try:
            extensions = mypycify(
                [f"--config-file={ROOT / 'pyproject.toml'}", *sources], opt_level="3", group_name=GROUP
            )
            setup(
                name="voice-native",
                ext_modules=extensions,
                script_args=["--quiet", "build_ext", "--build-lib", str(scratch / "lib")],
            )
        finally:
            os.chdir(here)
        built = {p.relative_to(scratch / "lib"): p for p in (scratch / "lib").rglob("*.so")}
        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
        entries: dict[str, dict[str, str]] = {}
        for module in MODULES:
            rel = Path(*module.split(".")).with_name(module.rsplit(".", 1)[-1] + suffix)
            if rel not in built:
                raise RuntimeError(f"mypyc produced no {rel}")
            entries[module] = {"file": str(rel), "sha256": digests[module]}
        group_rel = Path(f"{GROUP}__mypyc{suffix}")
        if group_rel not in built:
            raise RuntimeError(f"mypyc produced no {group_rel}")
        if out.exists():
            shutil.rmtree(out)
        for rel, path in built.items():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, out / rel)
    manifest = {
        "cache_tag": sys.implementation.cache_tag,
        "group": {"name": f"{GROUP}__mypyc", "file": str(group_rel)},
        "modules": entries,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--state"]:
        print(state())
        return 0
    if args:
        print("usage: python -m voice.nativebuild [--state]", file=sys.stderr)
        return 2
    build()
    print(f"voice.nativebuild: compiled {len(MODULES)} modules into {NATIVE_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
