"""prepare_model: params {model, source, family, backend} -> output[0] folder + manifest."""

from circuitflow import models, store
from circuitflow.workflow import run_logged


def main(smk):
    p = smk.params
    spec = models.ModelSpec(name=p.model, source=p.source, family=p.family, backend=p.backend)
    facts = models.prepare_model(spec, smk.output[0])
    store.write_manifest(
        smk.output[0],
        kind="model",
        params={"model": p.model, "source": p.source, "family": p.family, "backend": p.backend},
        extra={"model": facts},
    )


run_logged(snakemake, main)  # noqa: F821
