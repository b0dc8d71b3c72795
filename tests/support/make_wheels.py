"""Builds two tiny pure-Python wheels offline for the materialize tests, and a PEP 503 index of them
on disk (OUTDIR/simple); and one package published as a source distribution only (nixuvsrc 1.0),
whose build needs no network (an in-tree PEP 517 backend), to test source builds.

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


BACKEND = """
import base64, hashlib, os, zipfile

def _wheel(directory):
    name = "nixuvsrc-1.0-py3-none-any.whl"
    files = {"nixuvsrc/__init__.py": "BUILT_FROM_SOURCE = True\\n",
             "nixuvsrc-1.0.dist-info/METADATA": "Metadata-Version: 2.1\\nName: nixuvsrc\\nVersion: 1.0\\n",
             "nixuvsrc-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\\nGenerator: nixuv-tests\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"}
    record = []
    for p, t in files.items():
        d = base64.urlsafe_b64encode(hashlib.sha256(t.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{p},sha256={d},{len(t.encode())}")
    record.append("nixuvsrc-1.0.dist-info/RECORD,,")
    files["nixuvsrc-1.0.dist-info/RECORD"] = "\\n".join(record) + "\\n"
    with zipfile.ZipFile(os.path.join(directory, name), "w") as z:
        for p, t in files.items():
            z.writestr(p, t)
    return name

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    return _wheel(wheel_directory)

def get_requires_for_build_wheel(config_settings=None):
    return []
"""


def sdist(outdir):
    """nixuvsrc 1.0 as an sdist only: building it runs its own (tiny) backend."""
    import io
    import tarfile

    path = os.path.join(outdir, "nixuvsrc-1.0.tar.gz")
    files = {
        "nixuvsrc-1.0/pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n\n[project]\nname = "nixuvsrc"\nversion = "1.0"\n',
        "nixuvsrc-1.0/backend.py": BACKEND,
        "nixuvsrc-1.0/PKG-INFO": "Metadata-Version: 2.1\nName: nixuvsrc\nVersion: 1.0\n",
    }
    with tarfile.open(path, "w:gz") as t:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1704067200
            t.addfile(info, io.BytesIO(data))
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
    src = sdist(outdir)
    simple_index(outdir, [("nixuvdep", dep), ("nixuvdemo", demo), ("nixuvsrc", src)])


if __name__ == "__main__":
    main(sys.argv[1])
