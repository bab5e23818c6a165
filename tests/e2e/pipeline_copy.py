"""A variant of the demo pipeline for a test: the folder copied (pipeline.yaml and models/*.sql)
with pipeline.yaml changed by `transform(text) -> text`. Returns the new folder, which is what
STRATA_PIPELINE_SPEC takes."""
import os
import re
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "pipelines", "demo")


def demo_variant(dst, transform):
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(DEMO, dst)
    path = os.path.join(dst, "pipeline.yaml")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(transform(text))
    return dst


def without_schedule(text):
    """pipeline.yaml without its `schedule:` block (for a variant that declares its own)."""
    return re.sub(r"\nschedule:\n(?:[ #].*\n)+", "\n", text)
