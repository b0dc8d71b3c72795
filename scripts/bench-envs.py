"""`make bench`, real envs: `nixuv materialize` timed with the init container's exact environment
(taken from `nixuv preview`'s output for a Pod, as the webhook gives it), and the app's first
import. Prints Markdown table rows on stdout, progress on stderr.

Rows:
  - a small Python env, offline (wheels built here): cold and warm;
  - numpy + pandas (real wheels with native code, from the package index) plus one small nix
    derivation (built by real nix from a local flake): cold (empty store and cache), a second env
    sharing the uv cache and nix store, warm; skipped with a message when the index is unreachable;
  - `nixuv publish` of the same envs to a registry on loopback (Debian's docker-registry): the
    small env, numpy + pandas cold, and a second env sharing its interpreter and nix layers; and
    the pull + unpack of the image as a kubelet would (skopeo + umoci);
  - `import pandas` in the app's view of that env (read-only: PYTHONDONTWRITEBYTECODE=1): the
    first import after the build, and the median of the next ones, with the bytecode nixuv compiles
    at install and without it.

Usage: python3 scripts/bench-envs.py NIXUV_BINARY WORKDIR (with --offline: the offline row only).
Needs root (nix runs in a private
mount namespace, as nix-portable does) and the machine's nix and uv.
"""
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUPPORT = os.path.join(ROOT, "tests", "support")
ARGS = [a for a in sys.argv[1:] if a != "--offline"]
NIXUV, WORK = os.path.abspath(ARGS[0]), os.path.abspath(ARGS[1])
PY = "%d.%d" % sys.version_info[:2]
# The tests' flake of tiny derivations (SYSTEM is replaced by the machine's).
with open(os.path.join(SUPPORT, "flake.nix.in")) as f:
    FLAKE = f.read()


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def init_env(config, annotations):
    """The nixuv-init container's environment for a Pod with these annotations, from the webhook."""
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "bench", "labels": {"nixuv.io/inject": "true"}, "annotations": annotations},
           "spec": {"containers": [{"name": "app", "image": "debian:bookworm-slim"}]}}
    path = os.path.join(WORK, "pod.json")
    with open(path, "w") as f:
        json.dump(pod, f)
    out = subprocess.run([NIXUV, "preview", "-o", "json", "--config", config, "-f", path],
                         check=True, capture_output=True, text=True)
    init = json.loads(out.stdout)["spec"]["initContainers"][0]
    return {e["name"]: e.get("value", "") for e in init["env"]}


def store_env(env, store):
    """The init container's ENV with its volumes and tools under STORE (created)."""
    run_env = dict(env)
    run_env.update({
        "NIXUV_UV_ROOT": os.path.join(store, "uv"),
        "NIXUV_NIX_DIR": os.path.join(store, "np", ".nix-portable", "nix"),
        "HOME": os.path.join(store, "home"), "TMPDIR": os.path.join(store, "tmp"),
        "NIXUV_NIX_PORTABLE": os.path.join(SUPPORT, "nix-portable"), "NIXUV_UV": shutil.which("uv"),
        "PATH": os.environ["PATH"], "NIXUV_LOG": "warn",
    })
    for d in ("home", "tmp"):
        os.makedirs(os.path.join(store, d), exist_ok=True)
    return run_env


def materialize(env, store):
    """Runs materialize against STORE (uv and nix volumes under it); returns (seconds, ok)."""
    run_env = store_env(env, store)
    start = time.monotonic()
    p = subprocess.run([NIXUV, "materialize"], env=run_env, capture_output=True, text=True)
    took = time.monotonic() - start
    if p.returncode != 0:
        log(f"materialize failed:\n{p.stderr[-2000:]}")
    return took, p.returncode == 0


class Registry:
    """A distribution registry on a free loopback port, for the publish rows."""

    def __init__(self):
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.addr = "127.0.0.1:%d" % s.getsockname()[1]
        s.close()
        root = os.path.join(WORK, "registry")
        os.makedirs(root, exist_ok=True)
        config = os.path.join(root, "config.yml")
        with open(config, "w") as f:
            f.write(f"version: 0.1\nlog: {{level: error}}\nstorage:\n  filesystem: {{rootdirectory: {root}/data}}\n"
                    f"http:\n  addr: {self.addr}\n")
        self.proc = subprocess.Popen(["docker-registry", "serve", config],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import socket as so
        for _ in range(200):
            try:
                so.create_connection(self.addr.split(":"), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        self.repo = f"{self.addr}/nixuv/envs"

    def close(self):
        self.proc.kill()
        self.proc.wait()


def publish(env, store, registry):
    """Runs `nixuv publish` from a fresh private STORE; returns (seconds, digest or None)."""
    run_env = store_env(env, store)
    run_env["NIXUV_TERMINATION_LOG"] = os.path.join(store, "term")
    start = time.monotonic()
    p = subprocess.run([NIXUV, "publish", "--repository", registry.repo, "--insecure"],
                       env=run_env, capture_output=True, text=True)
    took = time.monotonic() - start
    if p.returncode != 0:
        log(f"publish failed:\n{p.stderr[-2000:]}")
        return took, None
    return took, p.stdout.strip().splitlines()[-1]


def pull_unpack(registry, digest, into):
    """skopeo copy + umoci raw unpack of the image, as a kubelet pulls and unpacks; seconds."""
    os.makedirs(into, exist_ok=True)
    start = time.monotonic()
    for cmd in (["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{registry.repo}@{digest}",
                 f"oci:{into}/layout:env"],
                ["umoci", "raw", "unpack", "--image", f"{into}/layout:env", f"{into}/rootfs"]):
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"{cmd[0]}: {p.stderr.strip()}")
    return time.monotonic() - start


def publish_rows(registry, label, first, second=None):
    """Rows for publishing FIRST (cold) and SECOND (sharing its layers) and pulling FIRST."""
    tag = "".join(c if c.isalnum() else "-" for c in label)
    cold, digest = publish(first, os.path.join(WORK, f"pub-{tag}-1"), registry)
    if digest is None:
        print(f"| publish, {label} | failed (see stderr) |")
        return
    secs = lambda t: ms(t) if t < 1 else f"{t:.1f} s"  # noqa: E731
    row = secs(cold)
    head = f"| `nixuv publish`, {label}: cold"
    if second is not None:
        shared, _ = publish(second, os.path.join(WORK, f"pub-{tag}-2"), registry)
        row += f" / {secs(shared)}"
        head += " / a second env sharing its interpreter and nix layers"
    print(f"{head} | {row} |")
    pulled = pull_unpack(registry, digest, os.path.join(WORK, f"pull-{tag}"))
    size = subprocess.run(["du", "-sb", os.path.join(WORK, f"pull-{tag}", "layout", "blobs")],
                          capture_output=True, text=True).stdout.split()[0]
    print(f"| pull + unpack of that image (skopeo + umoci; {int(size) / 1048576:.1f} MiB of blobs) | {ms(pulled)} |")


def venv_python(store, env_id):
    return os.path.join(store, "uv", "envs", env_id, "bin", "python")


def import_times(python, module, runs=5):
    """The first import, then the median of RUNS more, read-only as in the app (no .pyc written)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    times = []
    for _ in range(runs + 1):
        start = time.monotonic()
        subprocess.run([python, "-c", f"import {module}"], env=env, check=True)
        times.append(time.monotonic() - start)
    return times[0], statistics.median(times[1:])


def ms(s):
    return f"{s * 1000:.0f} ms"


def small_env():
    wheels = os.path.join(WORK, "wheels")
    subprocess.run([sys.executable, os.path.join(SUPPORT, "make_wheels.py"), wheels], check=True, capture_output=True)
    config = os.path.join(WORK, "offline.yaml")
    with open(config, "w") as f:
        f.write("initEnv:\n"
                f"- {{name: UV_FIND_LINKS, value: {wheels}}}\n- {{name: UV_OFFLINE, value: '1'}}\n"
                "- {name: UV_NO_INDEX, value: '1'}\n- {name: UV_PYTHON_DOWNLOADS, value: never}\n"
                "- {name: UV_PYTHON_PREFERENCE, value: only-system}\n")
    env = init_env(config, {"nixuv.io/python-deps": "nixuvdemo==1.0", "nixuv.io/python": PY})
    cold = statistics.median(materialize(env, os.path.join(WORK, f"small-{i}"))[0] for i in range(3))
    warm_store = os.path.join(WORK, "small-0")
    warm = statistics.median(materialize(env, warm_store)[0] for _ in range(10))
    print(f"| materialize, small Python env (offline): cold / warm (median) | {ms(cold)} / {ms(warm)} |")
    if REGISTRY is not None:
        publish_rows(REGISTRY, "small Python env (offline)", env)


def index_reachable():
    try:
        urllib.request.urlopen("https://pypi.org/simple/numpy/", timeout=10)
        return True
    except Exception as e:  # noqa: BLE001 - any failure means "skip with a message"
        log(f"package index unreachable ({e}): real-env rows skipped")
        return False


def real_env():
    if not index_reachable():
        print("| materialize, numpy + pandas + a nix derivation | skipped: package index unreachable |")
        return
    flake = os.path.join(WORK, "flake")
    os.makedirs(flake, exist_ok=True)
    with open(os.path.join(flake, "flake.nix"), "w") as f:
        f.write(FLAKE.replace("SYSTEM", f"{platform.machine()}-linux"))
    config = os.path.join(WORK, "real.yaml")
    with open(config, "w") as f:
        f.write(f"nixpkgs: path:{flake}\ninitEnv:\n- {{name: UV_PYTHON_DOWNLOADS, value: never}}\n"
                "- {name: UV_PYTHON_PREFERENCE, value: only-system}\n"
                "- {name: NIX_CONFIG, value: \"substituters =\\nbuild-users-group =\"}\n")
        # A private CA of this network (a TLS-inspecting proxy): declared, as an admin would.
        if os.environ.get("SSL_CERT_FILE"):
            f.write(f"- {{name: SSL_CERT_FILE, value: '{os.environ['SSL_CERT_FILE']}'}}\n")
    ann = {"nixuv.io/system-deps": "hello-nixuv", "nixuv.io/python-deps": "numpy, pandas", "nixuv.io/python": PY}
    first = init_env(config, ann)
    second = init_env(config, dict(ann, **{"nixuv.io/python-deps": "numpy, pandas, six"}))
    store = os.path.join(WORK, "real")
    log("real env: cold...")
    cold, ok = materialize(first, store)
    if not ok:
        print("| materialize, numpy + pandas + a nix derivation | failed (see stderr) |")
        return
    log("real env: second env, shared cache...")
    shared, _ = materialize(second, store)
    warm = statistics.median(materialize(first, store)[0] for _ in range(10))
    print(f"| materialize, numpy + pandas + a nix derivation: cold / second env sharing the cache / warm | "
          f"{cold:.1f} s / {shared:.1f} s / {ms(warm)} |")
    if REGISTRY is not None:
        publish_rows(REGISTRY, "numpy + pandas + a nix derivation", first, second)
    python = venv_python(store, first["NIXUV_ENV"])
    compiled_first, compiled = import_times(python, "pandas")
    # The same packages without bytecode, as before nixuv compiled at install.
    plain = os.path.join(WORK, "plain-venv")
    uv_env = dict(os.environ, UV_CACHE_DIR=os.path.join(store, "uv", ".cache", "uv"), UV_NO_CONFIG="1",
                  UV_LINK_MODE="hardlink", UV_PYTHON_DOWNLOADS="never", UV_PYTHON_PREFERENCE="only-system")
    subprocess.run(["uv", "venv", "-q", "--python", PY, plain], env=uv_env, check=True)
    subprocess.run(["uv", "pip", "install", "-q", "--python", os.path.join(plain, "bin", "python"), "numpy", "pandas"],
                   env=uv_env, check=True)
    plain_first, plain_med = import_times(os.path.join(plain, "bin", "python"), "pandas")
    print(f"| `import pandas` in the app (read-only env): first / median, bytecode compiled at install | "
          f"{ms(compiled_first)} / {ms(compiled)} |")
    print(f"| `import pandas` without compiled bytecode (every start compiles): first / median | "
          f"{ms(plain_first)} / {ms(plain_med)} |")


REGISTRY = None

if __name__ == "__main__":
    os.makedirs(WORK, exist_ok=True)
    if all(shutil.which(t) for t in ("docker-registry", "skopeo", "umoci")):
        REGISTRY = Registry()
    else:
        log("docker-registry, skopeo or umoci missing (make tools): publish rows skipped")
    try:
        small_env()
        if "--offline" not in sys.argv:
            real_env()
    finally:
        if REGISTRY is not None:
            REGISTRY.close()
