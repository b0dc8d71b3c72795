"""Packs the running CPython as a relocatable "managed Python" for uv, offline.

Writes OUTDIR/cpython.tar.gz (python/bin/python3.X with RUNPATH $ORIGIN/../lib, libpython, the
standard library without site-packages and tests) and OUTDIR/downloads.json, a download list in
uv's format pointing at it with its sha256, for UV_PYTHON_DOWNLOADS_JSON_URL. Needs patchelf.
Usage: python3 make_python_dist.py OUTDIR; prints the version (3.X.Y).
"""
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tarfile


def main(out):
    major, minor, patch = sys.version_info[:3]
    prefix = sys.base_prefix
    root = os.path.join(out, "python")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(os.path.join(root, "bin"))
    os.makedirs(os.path.join(root, "lib"))
    exe = os.path.join(root, "bin", f"python{major}.{minor}")
    shutil.copy2(os.path.realpath(sys.executable), exe)
    for alias in ("python3", "python"):
        os.symlink(f"python{major}.{minor}", os.path.join(root, "bin", alias))
    libdir = sysconfig.get_config_var("LIBDIR") or os.path.join(prefix, "lib")
    ldlib = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY") or ""
    if ldlib.endswith(".so") or ".so." in ldlib:
        shutil.copy2(os.path.join(libdir, ldlib), os.path.join(root, "lib", ldlib))
    stdlib = sysconfig.get_paths()["stdlib"]
    skip = {"site-packages", "dist-packages", "test", "__pycache__", "idlelib", "tkinter", "ensurepip", "turtledemo"}
    shutil.copytree(stdlib, os.path.join(root, "lib", f"python{major}.{minor}"), symlinks=True,
                    ignore=lambda d, names: [n for n in names if n in skip])
    os.makedirs(os.path.join(root, "lib", f"python{major}.{minor}", "site-packages"))
    # A distribution's stdlib may link outside itself (Debian's sitecustomize.py -> /etc/...):
    # a relocatable tree cannot, and uv refuses such an archive. Keep the file, not the link.
    for d, _, files in os.walk(root):
        for n in files:
            f = os.path.join(d, n)
            if os.path.islink(f) and os.path.isabs(os.readlink(f)):
                target = os.path.realpath(f)
                os.unlink(f)
                if os.path.isfile(target):
                    shutil.copy2(target, f)
    subprocess.run(["patchelf", "--set-rpath", "$ORIGIN/../lib", exe], check=True)
    tarball = os.path.join(out, "cpython.tar.gz")
    with tarfile.open(tarball, "w:gz", compresslevel=1) as t:
        t.add(root, arcname="python")
    sha = hashlib.sha256(open(tarball, "rb").read()).hexdigest()
    arch = platform.machine()
    key = f"cpython-{major}.{minor}.{patch}-linux-{arch}-gnu"
    entry = {"name": "cpython", "arch": {"family": arch, "variant": None}, "os": "linux", "libc": "gnu",
             "major": major, "minor": minor, "patch": patch, "prerelease": "", "url": "file://" + tarball,
             "sha256": sha, "variant": None, "build": "20240101"}
    with open(os.path.join(out, "downloads.json"), "w") as f:
        json.dump({key: entry}, f)
    shutil.rmtree(root)
    print(f"{major}.{minor}.{patch}")


if __name__ == "__main__":
    main(sys.argv[1])
