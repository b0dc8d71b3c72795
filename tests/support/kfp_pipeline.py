"""A Kubeflow pipeline written with the KFP SDK, as nixuv's users write them (docs/argo.md,
"Kubeflow Pipelines"): each step that needs packages gets nixuv's label and annotations through
kfp-kubernetes. Compiles the pipeline and prints its YAML (the pipeline, then its Kubernetes
platform config).

- `train`: a lightweight Python component in overlay mode (it installs kfp with pip when it
  starts, into the image's Python; its own packages come from nixuv);
- `score`: the same kind of component left in venv mode, which would fail (preview warns);
- `transcode`: a container component with a system dependency;
- `report`: no nixuv label (not injected)."""

import sys
import tempfile

from kfp import compiler, dsl, kubernetes


@dsl.component(base_image="python:3.12")
def train(rows: int) -> str:
    import pandas

    return f"{pandas.__version__} {rows}"


@dsl.component(base_image="python:3.12")
def score(model: str) -> str:
    import numpy

    return f"{numpy.__version__} {model}"


@dsl.container_component
def transcode():
    return dsl.ContainerSpec(image="debian:bookworm-slim", command=["ffmpeg"], args=["-version"])


@dsl.component(base_image="python:3.12")
def report(text: str):
    print(text)


@dsl.pipeline(name="nixuv-kfp-demo")
def pipeline(rows: int = 100):
    t = train(rows=rows)
    kubernetes.add_pod_label(t, "nixuv.io/inject", "true")
    kubernetes.add_pod_annotation(t, "nixuv.io/python-deps", "pandas==2.2.3")
    kubernetes.add_pod_annotation(t, "nixuv.io/python-mode", "overlay")
    s = score(model=t.output)
    kubernetes.add_pod_label(s, "nixuv.io/inject", "true")
    kubernetes.add_pod_annotation(s, "nixuv.io/python-deps", "numpy==2.1.3")
    c = transcode()
    kubernetes.add_pod_label(c, "nixuv.io/inject", "true")
    kubernetes.add_pod_label(c, "system.nixuv.io/ffmpeg-headless", "")
    report(text=s.output)


with tempfile.NamedTemporaryFile(suffix=".yaml") as f:
    compiler.Compiler().compile(pipeline, f.name)
    sys.stdout.write(open(f.name).read())
