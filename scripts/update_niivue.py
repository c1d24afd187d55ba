#!/usr/bin/env python3
"""Refresh the vendored NiiVue bundle of the reports' viewer from the npm registry.

The reports' interactive viewer (``adheat_app/report/viewer.py``) inlines
NiiVue's single-file UMD build, so a report opens without a network. This
script replaces the vendored copy with the build of one pinned release:

1. ``npm pack @niivue/niivue@<version>`` in a temporary folder (npm checks the
   tarball against the registry's integrity hash);
2. verifies the package (name, version, licence ``BSD-2-Clause``) and the
   bundle (``package/dist/niivue.umd.js``: defines the ``niivue`` global,
   contains no ``</script`` that would end the report's inline script);
3. copies the bundle to ``adheat_app/report/static/niivue.umd.js`` and records
   version, licence, size, SHA-256 and the registry's integrity in
   ``adheat_app/report/static/niivue.json``.

The npm package ships no licence file; ``static/niivue.LICENSE`` holds the
BSD-2-Clause text of the NiiVue repository and is kept as long as the
package's licence field still reads ``BSD-2-Clause`` (the script stops
otherwise); the dependencies the bundle contains are recorded in
``niivue.json`` (their licences are listed in ``niivue.LICENSE``). Needs
``npm`` and the registry; run from the repository root::

    python scripts/update_niivue.py --version 0.69.0

then run ``pytest tests/test_viewer.py`` and commit the three files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@niivue/niivue"
LICENSE = "BSD-2-Clause"
STATIC = Path(__file__).resolve().parents[1] / "adheat_app" / "report" / "static"


def pack(version: str, folder: Path) -> tuple[Path, str]:
    """Download the release tarball with ``npm pack``; return it and the registry's integrity string."""
    out = subprocess.run(["npm", "pack", f"{PACKAGE}@{version}", "--json"], cwd=folder, check=True,
                         capture_output=True, text=True).stdout
    info = json.loads(out)[0]
    return folder / info["filename"], info["integrity"]


def verify(package: Path, version: str) -> tuple[bytes, dict[str, str]]:
    """The bundle's bytes and the bundled dependencies, after checking the package and the bundle's content."""
    meta = json.loads((package / "package.json").read_text())
    if (meta.get("name"), meta.get("version"), meta.get("license")) != (PACKAGE, version, LICENSE):
        sys.exit(f"unexpected package.json: name {meta.get('name')}, version {meta.get('version')}, "
                 f"license {meta.get('license')} (expected {PACKAGE} {version} {LICENSE})")
    bundle = (package / "dist" / "niivue.umd.js").read_bytes()
    if b"</script" in bundle.lower():
        sys.exit("the bundle contains '</script': it cannot be inlined in a <script> element")
    if b"niivue" not in bundle[:1000]:
        sys.exit("dist/niivue.umd.js does not define the niivue global at its start: not the UMD build")
    return bundle, meta.get("dependencies", {})


def main(argv: list[str] | None = None) -> int:
    """Vendor the NiiVue bundle of ``--version`` and record its provenance."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--version", required=True, help="NiiVue release, e.g. 0.69.0")
    args = parser.parse_args(argv)
    if shutil.which("npm") is None:
        sys.exit("npm is not installed (it is only needed to refresh the vendored bundle)")
    with tempfile.TemporaryDirectory() as tmp:
        tarball, integrity = pack(args.version, Path(tmp))
        with tarfile.open(tarball) as archive:
            archive.extractall(tmp, filter="data")
        bundle, dependencies = verify(Path(tmp) / "package", args.version)
    (STATIC / "niivue.umd.js").write_bytes(bundle)
    record = {"package": PACKAGE, "version": args.version, "license": LICENSE, "file": "dist/niivue.umd.js",
              "bytes": len(bundle), "sha256": hashlib.sha256(bundle).hexdigest(), "integrity": integrity,
              "source": f"npm pack {PACKAGE}@{args.version}",
              "bundled_dependencies": dependencies}
    (STATIC / "niivue.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"vendored {PACKAGE} {args.version}: {len(bundle)} bytes, sha256 {record['sha256']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
