"""An Argo Workflow written with Hera, as nixuv's users write them (docs/argo.md): each script
template that needs packages sets nixuv's label and annotations in its own metadata. Prints the
Workflow as YAML. One template puts its declaration on the wrong level on purpose (the Workflow's
own metadata, which Argo does not copy to Pods), and one declares without opting in: nixuv
preview warns about both. Every step resolves its Python deps as of one date (the Workflow's
`podMetadata`, which Argo copies to every step's Pod), so `nixuv preview --strict` has nothing to
say about unpinned versions."""

from hera.workflows import Steps, Workflow, script
from hera.workflows.models import Metadata


@script(
    image="python:3.12",
    labels={"nixuv.io/inject": "true"},
    annotations={"nixuv.io/python-deps": "numpy==1.26.4, pandas>=2,<3"},
)
def analyse():
    import numpy
    import pandas

    print(numpy.__version__, pandas.__version__)


# A script template runs its source with the image's `python`: the image must have one (a
# `debian` image has none), or the step must declare Python deps (the env's venv brings one).
@script(
    image="python:3.12-slim",
    labels={"nixuv.io/inject": "true", "system.nixuv.io/ffmpeg-headless": ""},
)
def transcode():
    import subprocess

    subprocess.run(["ffmpeg", "-version"], check=True)


@script(image="python:3.12", annotations={"nixuv.io/python-deps": "requests"})
def forgot_to_opt_in():
    import requests

    print(requests.__version__)


@script(image="python:3.12")
def plain():
    print("no dependencies")


with Workflow(
    generate_name="nixuv-demo-",
    entrypoint="main",
    # The wrong level: Argo does not copy the Workflow's own labels to its Pods.
    labels={"nixuv.io/inject": "true"},
    # The right level for what every step shares: one resolution date for the whole workflow.
    pod_metadata=Metadata(annotations={"nixuv.io/exclude-newer": "2025-06-01T00:00:00Z"}),
) as w:
    with Steps(name="main"):
        analyse()
        transcode()
        forgot_to_opt_in()
        plain()

print(w.to_yaml())
