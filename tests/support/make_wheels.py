"""Builds two tiny pure-Python wheels offline for the materialize tests, and a PEP 503 index of them
on disk (OUTDIR/simple).

nixuvdemo 1.0 depends on nixuvdep>=0.1 and has a console script `nixuvdemo`. Usage:
python3 make_wheels.py OUTDIR
"""
import base64
import hashlib
import os
import sys
import zipfile


def wheel(outdir, name, version, files, requires=(), scripts=None):
    dist = f"{name}-{version}.dist-info"
    files = dict(files)
    meta = [f"Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    files[f"{dist}/METADATA"] = "\n".join(meta) + "\n"
    files[f"{dist}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: nixuv-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    if scripts:
        files[f"{dist}/entry_points.txt"] = "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in scripts.items())
    record = []
    for path, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    path = os.path.join(outdir, f"{name}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as z:
        for p, text in files.items():
            z.writestr(zipfile.ZipInfo(p, date_time=(2024, 1, 1, 0, 0, 0)), text)
    return path


def simple_index(outdir, wheels):
    """A PEP 503 index on disk, OUTDIR/simple/<name>/index.html with file:// links and sha256."""
    for name, path in wheels:
        d = os.path.join(outdir, "simple", name)
        os.makedirs(d, exist_ok=True)
        sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
        href = "file://" + os.path.abspath(path) + "#sha256=" + sha
        with open(os.path.join(d, "index.html"), "w") as f:
            f.write(f'<!DOCTYPE html><html><body><a href="{href}">{os.path.basename(path)}</a></body></html>\n')


def main(outdir):
    os.makedirs(outdir, exist_ok=True)
    dep = wheel(outdir, "nixuvdep", "0.1", {"nixuvdep/__init__.py": "BASE = 41\n"})
    demo = wheel(
        outdir,
        "nixuvdemo",
        "1.0",
        {"nixuvdemo/__init__.py": "from nixuvdep import BASE\nVALUE = BASE + 1\n\ndef main():\n    print('nixuvdemo', VALUE)\n"},
        requires=["nixuvdep>=0.1"],
        scripts={"nixuvdemo": "nixuvdemo:main"},
    )
    simple_index(outdir, [("nixuvdep", dep), ("nixuvdemo", demo)])


if __name__ == "__main__":
    main(sys.argv[1])
